"""`MultiViewLoss`: one weighted sum of every head's masked BCE, and view dropout for training.

Each head's term only counts the rows that head ran on and the labels that are known (NaN =
unknown). The head weights follow a per-epoch `LossSchedule`, so early epochs can lean on the
per-view heads (auxiliary losses) and later ones on the joint head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.errors import ConfigError
from models.names import HEADS
from models.twoview import ViewLogits

__all__ = ["HeadWeights", "LossSchedule", "LossTerms", "MultiViewLoss", "class_pos_weight", "view_dropout"]


@dataclass(frozen=True)
class HeadWeights:
    """The weight of each head's term in the total loss."""

    joint: float = 1.0
    frontal: float = 1.0
    lateral: float = 1.0

    def __post_init__(self) -> None:
        if min(self.joint, self.frontal, self.lateral) < 0:
            raise ConfigError(f"head weights must be >= 0, got {self}")

    def get(self, head: str) -> float:
        return getattr(self, head)


@dataclass(frozen=True)
class LossSchedule:
    """Head weights that move linearly from `start` to `end` over the first `ramp_epochs` epochs."""

    start: HeadWeights = field(default_factory=lambda: HeadWeights(joint=0.3, frontal=1.0, lateral=1.0))
    end: HeadWeights = field(default_factory=lambda: HeadWeights(joint=1.0, frontal=0.3, lateral=0.3))
    ramp_epochs: int = 5

    @classmethod
    def constant(cls, weights: HeadWeights) -> LossSchedule:
        return cls(start=weights, end=weights, ramp_epochs=0)

    def weights(self, epoch: int) -> HeadWeights:
        if self.ramp_epochs <= 0 or epoch >= self.ramp_epochs:
            return self.end
        t = max(epoch, 0) / self.ramp_epochs
        mix = {h: (1 - t) * self.start.get(h) + t * self.end.get(h) for h in HEADS}
        return HeadWeights(**mix)


@dataclass
class LossTerms:
    """The total to call `backward()` on, each head's mean loss, and how many labels each term saw."""

    total: Tensor
    heads: dict[str, Tensor]
    counts: dict[str, Tensor]  # 0-d integer tensors on the logits' device: reading them waits for the GPU
    weights: HeadWeights


class MultiViewLoss(nn.Module):
    """`total = w_joint*L_joint + w_frontal*L_frontal + w_lateral*L_lateral`, each term masked BCE."""

    def __init__(self, schedule: LossSchedule | None = None, pos_weight: Tensor | None = None) -> None:
        super().__init__()
        self.schedule = schedule or LossSchedule()
        self.register_buffer(
            "pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float()
        )

    def forward(self, logits: ViewLogits, labels: Tensor, epoch: int = 0) -> LossTerms:
        weights = self.schedule.weights(epoch)
        heads, counts = {}, {}
        total = None
        for head in HEADS:
            term, count = self._masked_bce(logits.head(head), labels)
            heads[head], counts[head] = term.detach(), count
            weighted = weights.get(head) * term
            total = weighted if total is None else total + weighted
        return LossTerms(total=total, heads=heads, counts=counts, weights=weights)

    def _masked_bce(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mean BCE over entries where the head ran and the label is known; 0 (still in the graph) if none.

        Everything stays on the device: no `int()` or `.item()`, so a training step never waits for the GPU.
        """
        known = ~torch.isnan(logits) & ~torch.isnan(labels)
        safe_logits = torch.where(known, logits, torch.zeros_like(logits))  # NaN must not reach BCE's grad
        safe_labels = torch.where(known, labels, torch.zeros_like(labels))
        per_entry = F.binary_cross_entropy_with_logits(
            safe_logits, safe_labels, pos_weight=self.pos_weight, reduction="none"
        )
        count = known.sum()
        return (per_entry * known).sum() / count.clamp(min=1), count


def class_pos_weight(labels: Tensor, max_weight: float = 50.0) -> Tensor:
    """Per-label `negatives / positives` over known labels, clamped, for class-balanced BCE."""
    known = ~torch.isnan(labels)
    positives = ((labels == 1) & known).sum(0).float()
    negatives = ((labels == 0) & known).sum(0).float()
    return (negatives / positives.clamp(min=1)).clamp(min=1.0 / max_weight, max=max_weight)


def view_dropout(
    has_frontal: Tensor, has_lateral: Tensor, p: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Drop one view (frontal or lateral, evenly) from a share `p` of two-view rows.

    Training with it lets the single-view heads see two-view studies too, and keeps the joint
    head from leaning on a view that is sometimes missing at prediction time.
    """
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"view dropout must be in [0, 1], got {p}")
    both = has_frontal & has_lateral
    device = has_frontal.device
    drop = both & (torch.rand(both.shape, generator=generator).to(device) < p)
    drop_lateral = torch.rand(both.shape, generator=generator).to(device) < 0.5
    return has_frontal & ~(drop & ~drop_lateral), has_lateral & ~(drop & drop_lateral)
