"""PNG figures for run folders and reports: training curves and ROC curves (matplotlib, no display)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_auroc, binary_roc  # noqa: E402

from models.names import OUTPUTS  # noqa: E402
from pipeline.runs import read_metrics  # noqa: E402

__all__ = ["plot_roc_curves", "plot_training_curves", "roc_figure", "training_figure"]


def _epoch_means(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for epoch, value in points:
        by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def plot_training_curves(run_dir: Path, out: Path) -> Path:
    """Loss (train and validation) and validation AUROC per head, by epoch, as a PNG."""
    return _save(training_figure(run_dir), out)


def training_figure(run_dir: Path) -> plt.Figure:
    """The training-curves figure of a run folder (or one metrics CSV)."""
    series = read_metrics(run_dir)
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("train/loss", "-"), ("val/loss", "--")):
        if name in series:
            loss_ax.plot(*_epoch_means(series[name]), style, marker="o", label=name)
    loss_ax.set(title="Loss", xlabel="epoch")
    for head in OUTPUTS:
        name = f"val/auroc_{head}"
        if name in series:
            auc_ax.plot(*_epoch_means(series[name]), marker="o", label=head)
    auc_ax.set(title="Validation macro AUROC", xlabel="epoch", ylim=(0.0, 1.0))
    for ax in (loss_ax, auc_ax):
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
    return fig


def plot_roc_curves(
    heads: Mapping[str, torch.Tensor], labels: torch.Tensor, names: Sequence[str], out: Path
) -> Path:
    """One panel per label with the ROC curve of each head on the studies it ran on, as a PNG."""
    return _save(roc_figure(heads, labels, names), out)


def roc_figure(heads: Mapping[str, torch.Tensor], labels: torch.Tensor, names: Sequence[str]) -> plt.Figure:
    """The ROC figure: one panel per label, one curve per head, each legend entry with its AUROC."""
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for j, name in enumerate(names):
        ax = axes[j // cols][j % cols]
        for head, probs in heads.items():
            keep = ~torch.isnan(probs[:, j]) & ~torch.isnan(labels[:, j])
            y = labels[keep, j].long()
            if keep.sum() == 0 or int(y.sum()) in (0, int(keep.sum())):
                continue
            fpr, tpr, _ = binary_roc(probs[keep, j].float(), y)
            auroc = float(binary_auroc(probs[keep, j].float(), y))
            # Drawn over the frame, so a perfect curve along the axes stays visible.
            ax.plot(fpr.numpy(), tpr.numpy(), label=f"{head} (AUROC {auroc:.3f})", clip_on=False, zorder=3)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(
            title=name, xlabel="1 - specificity", ylabel="sensitivity", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02)
        )
        if ax.lines[:-1]:
            ax.legend(loc="lower right")
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].axis("off")
    return fig


def _save(fig: plt.Figure, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
