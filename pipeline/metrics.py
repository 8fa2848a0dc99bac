"""Validation metrics: AUROC per label, head and route, Youden thresholds, bootstrap intervals.

Inputs are probabilities `[N, K]` with NaN where a head did not run, and labels `[N, K]` with NaN
where unknown. A label's AUROC is computed on the rows where both are known and is None when those
rows do not hold both classes (torchmetrics would report 0 there, which reads as a real score).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, binary_roc

from models.names import OUTPUTS, ROUTES

__all__ = [
    "MIN_POSITIVES",
    "MIN_STUDIES",
    "HeadMetrics",
    "EvaluationReport",
    "auroc_per_label",
    "bootstrap_auroc",
    "evaluation_report",
    "macro",
    "small_validation_warning",
    "unreliable_labels",
    "youden_thresholds",
]

#: A validation set smaller than this many studies gives AUROCs and thresholds too noisy to trust.
MIN_STUDIES = 50
#: A label with fewer positive (or negative) studies than this has an AUROC and threshold too noisy to trust.
MIN_POSITIVES = 10


def _known(probs: Tensor, labels: Tensor, j: int) -> tuple[Tensor, Tensor]:
    keep = ~torch.isnan(probs[:, j]) & ~torch.isnan(labels[:, j])
    return probs[keep, j].float(), labels[keep, j].long()


def _auroc(p: Tensor, y: Tensor) -> float | None:
    if p.numel() == 0 or int(y.sum()) in (0, y.numel()):
        return None
    return float(binary_auroc(p, y))


def auroc_per_label(probs: Tensor, labels: Tensor, names: Sequence[str]) -> dict[str, float | None]:
    """AUROC of each label over its known rows; None where a class is absent."""
    return {name: _auroc(*_known(probs, labels, j)) for j, name in enumerate(names)}


def macro(values: Mapping[str, float | None]) -> float | None:
    """Mean of the defined values, or None when none is defined."""
    defined = [v for v in values.values() if v is not None]
    return sum(defined) / len(defined) if defined else None


def youden_thresholds(probs: Tensor, labels: Tensor, names: Sequence[str]) -> dict[str, float]:
    """Per label, the threshold that maximises sensitivity + specificity - 1 (labels lacking a class are left out)."""
    out = {}
    for j, name in enumerate(names):
        p, y = _known(probs, labels, j)
        if _auroc(p, y) is None:
            continue
        fpr, tpr, thresholds = binary_roc(p, y)
        best = int(torch.argmax(tpr - fpr))
        out[name] = float(min(max(float(thresholds[best]), 0.0), 1.0))
    return out


def bootstrap_auroc(
    probs: Tensor,
    labels: Tensor,
    names: Sequence[str],
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap confidence interval of each label's AUROC, resampling studies."""
    g = torch.Generator().manual_seed(seed)
    n = probs.shape[0]
    samples: dict[str, list[float]] = {name: [] for name in names}
    samples["macro"] = []
    for _ in range(rounds):
        idx = torch.randint(0, n, (n,), generator=g)
        values = auroc_per_label(probs[idx], labels[idx], names)
        for name, value in values.items():
            if value is not None:
                samples[name].append(value)
        m = macro(values)
        if m is not None:
            samples["macro"].append(m)
    tail = (1 - level) / 2
    out: dict[str, tuple[float, float] | None] = {}
    for name, values in samples.items():
        if len(values) < rounds // 2:  # mostly undefined: no honest interval
            out[name] = None
            continue
        ordered = torch.tensor(values).sort().values
        lo = ordered[int(math.floor(tail * (len(values) - 1)))]
        hi = ordered[int(math.ceil((1 - tail) * (len(values) - 1)))]
        out[name] = (float(lo), float(hi))
    return out


@dataclass
class HeadMetrics:
    """AUROC per label and macro for one head (or one route of the final head), over `n` studies."""

    n: int
    auroc: dict[str, float | None]
    macro: float | None
    ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)


@dataclass
class EvaluationReport:
    """Everything a validation or evaluation run reports; `to_dict()` is what report.json holds."""

    labels: list[str]
    heads: dict[str, HeadMetrics]
    routes: dict[str, HeadMetrics]
    two_view_frontal_vs_joint: dict[str, HeadMetrics]
    thresholds: dict[str, float]
    route_counts: dict[str, int]
    notice: str | None = None  # the model's synthetic-only sentence, shown under the title
    studies: int = 0  # validation studies
    positives: dict[str, int] = field(default_factory=dict)  # studies labelled 1, per label
    negatives: dict[str, int] = field(default_factory=dict)  # studies labelled 0, per label

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def unreliable(self) -> dict[str, str]:
        """Labels whose AUROC and threshold are too noisy to trust, with why (see `unreliable_labels`)."""
        return unreliable_labels(self.studies, self.positives, self.negatives, self.labels)

    @property
    def warning(self) -> str | None:
        """One sentence saying the validation set is too small to trust, if it is."""
        return small_validation_warning(self.studies, self.unreliable)

    def to_markdown(self, title: str = "Validation report") -> str:
        """The report as Markdown; the notice, if any, right under the title."""
        lines = [f"# {title}", ""]
        if self.notice:
            lines += [f"> **{self.notice}**", ""]
        if self.warning:
            lines += [f"> **Warning: {self.warning}**", ""]
        counts = ", ".join(f"{k}: {v}" for k, v in self.route_counts.items())
        lines += [f"Studies by route: {counts}.", ""]
        shaky = self.unreliable
        lines += _table("AUROC by head (each head on the studies it ran on)", self.labels, self.heads, shaky)
        lines += _table("AUROC of the final prediction by route", self.labels, self.routes, shaky)
        lines += _table(
            "Two-view studies: the frontal head alone vs the joint head (what the lateral view adds)",
            self.labels,
            self.two_view_frontal_vs_joint,
            shaky,
        )
        lines += ["## Thresholds (Youden's J on the final prediction)", ""]
        lines += [
            f"- {name}: {value:.3f}" + (f" (unreliable: {shaky[name]})" if name in shaky else "")
            for name, value in self.thresholds.items()
        ] or ["- none could be chosen"]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None, ci: tuple[float, float] | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def unreliable_labels(
    studies: int, positives: Mapping[str, int], negatives: Mapping[str, int], labels: Sequence[str]
) -> dict[str, str]:
    """Labels whose validation AUROC and threshold are too noisy to trust -> why, in words.

    Every label when there are fewer than `MIN_STUDIES` studies; else those with fewer than
    `MIN_POSITIVES` positive or negative studies.
    """
    out = {}
    for label in labels:
        pos, neg = positives.get(label, 0), negatives.get(label, 0)
        if studies < MIN_STUDIES:
            out[label] = f"{studies} validation studies, fewer than {MIN_STUDIES}"
        elif pos < MIN_POSITIVES:
            out[label] = f"{pos} positive studies, fewer than {MIN_POSITIVES}"
        elif neg < MIN_POSITIVES:
            out[label] = f"{neg} negative studies, fewer than {MIN_POSITIVES}"
    return out


def small_validation_warning(studies: int, unreliable: Mapping[str, str]) -> str | None:
    """The sentence a report (and the app) shows when some AUROCs and thresholds cannot be trusted."""
    if not unreliable:
        return None
    if studies < MIN_STUDIES:
        return (
            f"validation has only {studies} studies (fewer than {MIN_STUDIES}): every AUROC and threshold "
            "below is unreliable (marked ⚠); validate on more studies before using this model"
        )
    return (
        f"too few positive or negative validation studies (fewer than {MIN_POSITIVES}) for "
        f"{', '.join(unreliable)}: their AUROCs and thresholds are unreliable (marked ⚠)"
    )


def _table(
    title: str, labels: Sequence[str], rows: Mapping[str, HeadMetrics], shaky: Mapping[str, str] = {}
) -> list[str]:
    lines = [
        f"## {title}",
        "",
        "| | n | " + " | ".join(f"{label} ⚠" if label in shaky else label for label in labels) + " | macro |",
        "|---" * (len(labels) + 3) + "|",
    ]
    for name, m in rows.items():
        cells = [_fmt(m.auroc[label], m.ci.get(label)) for label in labels]
        lines.append(f"| {name} | {m.n} | " + " | ".join(cells) + f" | {_fmt(m.macro, m.ci.get('macro'))} |")
    return lines + [""]


def _metrics(probs: Tensor, labels: Tensor, names: Sequence[str], bootstrap: int, seed: int) -> HeadMetrics:
    ran = ~torch.isnan(probs).all(dim=1)
    probs, labels = probs[ran], labels[ran]
    values = auroc_per_label(probs, labels, names)
    ci = (
        bootstrap_auroc(probs, labels, names, rounds=bootstrap, seed=seed) if bootstrap and len(probs) else {}
    )
    return HeadMetrics(n=int(ran.sum()), auroc=values, macro=macro(values), ci=ci)


def evaluation_report(
    heads: Mapping[str, Tensor],
    labels: Tensor,
    routes: Sequence[str],
    names: Sequence[str],
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> EvaluationReport:
    """AUROC per head, per route, frontal-vs-joint on two-view studies, and Youden thresholds.

    `heads` maps "final", "joint", "frontal", "lateral" to probabilities `[N, K]` (NaN where not run).
    """
    labels = labels.float()
    route_index = {r: torch.tensor([x == r for x in routes], dtype=torch.bool) for r in ROUTES}
    both = route_index["joint"]
    return EvaluationReport(
        labels=list(names),
        heads={h: _metrics(heads[h], labels, names, bootstrap, seed) for h in OUTPUTS},
        routes={
            r: _metrics(heads["final"][mask], labels[mask], names, bootstrap, seed)
            for r, mask in route_index.items()
            if mask.any()
        },
        two_view_frontal_vs_joint={
            h: _metrics(heads[h][both], labels[both], names, bootstrap, seed) for h in ("frontal", "joint")
        },
        thresholds=youden_thresholds(heads["final"], labels, names),
        route_counts={r: int(mask.sum()) for r, mask in route_index.items()},
        studies=int(labels.shape[0]),
        positives={name: int((labels[:, j] == 1).sum()) for j, name in enumerate(names)},
        negatives={name: int((labels[:, j] == 0).sum()) for j, name in enumerate(names)},
    )
