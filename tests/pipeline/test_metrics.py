"""Validation metrics: AUROC where it is defined, Youden thresholds, bootstrap intervals, route tables."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.metrics import (
    MIN_POSITIVES,
    MIN_STUDIES,
    auroc_per_label,
    bootstrap_auroc,
    evaluation_report,
    macro,
    small_validation_warning,
    unreliable_labels,
    youden_thresholds,
)

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


def report_for(studies: int, positives: int, labels=("a", "b")):
    """A report on `studies` studies, `positives` of them positive for "a" and half positive for "b"."""
    truth = torch.zeros(studies, len(labels))
    truth[:positives, 0] = 1.0
    truth[: studies // 2, 1] = 1.0
    probs = truth * 0.8 + 0.1
    heads = {"final": probs, "joint": probs, "frontal": probs, "lateral": probs}
    return evaluation_report(heads, truth, ["joint"] * studies, list(labels))


def test_a_small_validation_set_marks_every_auroc_and_threshold_unreliable():
    """A report on 8 studies showed AUROC 1.000 and a 0.999 threshold with no warning."""
    report = report_for(8, 4)
    assert report.studies == 8 and report.positives == {"a": 4, "b": 4}
    assert set(report.unreliable) == {"a", "b"} and "fewer than 50" in report.warning
    text = report.to_markdown()
    assert "> **Warning: validation has only 8 studies" in text
    assert "| | n | a ⚠ | b ⚠ | macro |" in text
    assert "- a: " in text and "(unreliable: 8 validation studies, fewer than 50)" in text


def test_a_label_with_few_positives_is_unreliable_and_the_others_are_not():
    report = report_for(60, 6)
    assert report.unreliable == {"a": "6 positive studies, fewer than 10"}
    assert "for a:" in report.warning
    assert report_for(60, 30).warning is None
    assert "⚠" not in report_for(60, 30).to_markdown()


def test_the_reliability_rule_reads_a_saved_report():
    saved = json.loads(json.dumps(report_for(60, 6).to_dict()))
    unreliable = unreliable_labels(saved["studies"], saved["positives"], saved["negatives"], saved["labels"])
    assert list(unreliable) == ["a"] and small_validation_warning(saved["studies"], unreliable)
    assert (MIN_STUDIES, MIN_POSITIVES) == (50, 10)
