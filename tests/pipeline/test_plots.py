"""Figures for runs and reports: ROC curves that show a perfect curve and name each AUROC; training curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from pipeline.plots import plot_roc_curves, plot_training_curves, roc_figure, training_figure


def test_a_perfect_roc_curve_stays_visible_and_the_legend_names_each_auroc(tmp_path):
    labels = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    heads = {
        "final": torch.tensor([[0.1], [0.2], [0.8], [0.9]]),
        "lateral": torch.tensor([[0.6], [0.2], [0.5], [0.9]]),
    }
    fig = roc_figure(heads, labels, ["effusion"])
    ax = fig.axes[0]
    assert ax.get_xlim()[0] < 0 and ax.get_ylim()[1] > 1  # the curve along the border is not hidden
    perfect = ax.lines[0]
    assert perfect.get_clip_on() is False
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["final (AUROC 1.000)", "lateral (AUROC 0.750)"]
    plt.close(fig)
    out = plot_roc_curves(heads, labels, ["effusion"], tmp_path / "roc.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_label_without_both_classes_gets_no_curve():
    heads = {"final": torch.tensor([[0.1], [0.9]])}
    fig = roc_figure(heads, torch.tensor([[1.0], [1.0]]), ["nodule"])
    assert len(fig.axes[0].lines) == 1 and fig.axes[0].get_legend() is None  # the chance diagonal only
    plt.close(fig)


def test_training_curves_plot_every_logged_head(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "epoch,step,train/loss,val/loss,val/auroc_final,val/auroc_joint\n"
        "0,1,1.0,,,\n0,2,0.8,0.9,0.6,0.55\n1,3,0.7,,,\n1,4,0.6,0.7,0.7,0.65\n"
    )
    fig = training_figure(metrics)
    loss_ax, auc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train/loss", "val/loss"]
    assert [line.get_label() for line in auc_ax.lines] == ["final", "joint"]
    assert list(loss_ax.lines[0].get_ydata()) == pytest.approx([0.9, 0.65])  # the mean of each epoch's steps
    plt.close(fig)
    assert plot_training_curves(metrics, tmp_path / "curves.png").stat().st_size > 1000
