"""Validation metrics: AUROC where it is defined, Youden thresholds, bootstrap intervals, route tables."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.metrics import auroc_per_label, bootstrap_auroc, evaluation_report, macro, youden_thresholds

NAN = float("nan")


def test_auroc_is_none_without_both_classes_and_ignores_unknowns():
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.3], [0.8, NAN], [0.7, 0.9]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [NAN, 1.0], [0.0, 0.0]])
    values = auroc_per_label(probs, labels, ["a", "b"])
    assert values["a"] == pytest.approx(1.0)  # rows 0, 1, 3: the positive ranks first
    assert values["b"] is None  # known rows 0, 1, 3 are all negative; row 2 has no probability
    assert macro(values) == pytest.approx(1.0)
    assert macro({"a": None}) is None


def test_youden_threshold_separates_a_clean_split():
    probs = torch.tensor([[0.1], [0.2], [0.35], [0.6], [0.8]])
    labels = torch.tensor([[0.0], [0.0], [0.0], [1.0], [1.0]])
    threshold = youden_thresholds(probs, labels, ["a"])["a"]
    assert 0.35 < threshold <= 0.6 + 1e-6
    assert youden_thresholds(probs, torch.zeros(5, 1), ["a"]) == {}


def test_bootstrap_interval_holds_the_estimate_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(300, 2, generator=g) < 0.4).float()
    probs = (0.5 * labels + 0.8 * torch.rand(300, 2, generator=g)).clamp(0, 1)
    point = auroc_per_label(probs, labels, ["a", "b"])
    ci = bootstrap_auroc(probs, labels, ["a", "b"], rounds=200, seed=3)
    for name in ("a", "b"):
        lo, hi = ci[name]
        assert lo < point[name] < hi and hi - lo < 0.2
    assert ci == bootstrap_auroc(probs, labels, ["a", "b"], rounds=200, seed=3)
    assert ci["macro"][0] < macro(point) < ci["macro"][1]


def test_report_splits_heads_and_routes():
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0]])
    final = torch.tensor([[0.9], [0.1], [0.8], [0.3], [0.4], [0.6]])
    joint = torch.tensor([[0.9], [0.1], [NAN], [NAN], [NAN], [NAN]])
    frontal = torch.tensor([[0.2], [0.7], [0.8], [0.3], [NAN], [NAN]])
    lateral = torch.tensor([[0.6], [0.5], [NAN], [NAN], [0.4], [0.6]])
    routes = ["joint", "joint", "frontal", "frontal", "lateral", "lateral"]
    heads = {"final": final, "joint": joint, "frontal": frontal, "lateral": lateral}
    report = evaluation_report(heads, labels, routes, ["a"])
    assert report.route_counts == {"joint": 2, "frontal": 2, "lateral": 2}
    assert report.heads["joint"].n == 2 and report.heads["frontal"].n == 4 and report.heads["lateral"].n == 4
    assert report.routes["lateral"].auroc["a"] == 0.0 and report.routes["frontal"].auroc["a"] == 1.0
    compare = report.two_view_frontal_vs_joint
    assert compare["frontal"].auroc["a"] == 0.0 and compare["joint"].auroc["a"] == 1.0
    text = report.to_markdown()
    assert "| joint | 2 | 1.000 | 1.000 |" in text and "what the lateral view adds" in text
    assert json.loads(json.dumps(report.to_dict()))["thresholds"] == report.thresholds
