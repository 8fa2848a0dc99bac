"""MultiViewLoss: masks, unknown labels, empty terms, the schedule, and where gradients go."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models import ConfigError, ModelConfig, TwoViewNet
from models.losses import HeadWeights, LossSchedule, MultiViewLoss, class_pos_weight, view_dropout
from models.twoview import Route, ViewLogits
from tests.models.test_twoview import MIXED, make_batch

NAN = float("nan")


def logits_for(rows, k=2, seed=0, requires_grad=True):
    """Hand-made ViewLogits for rows of (has_frontal, has_lateral), NaN where a head did not run."""
    g = torch.Generator().manual_seed(seed)
    has_f = torch.tensor([r[0] for r in rows], dtype=torch.bool)
    has_l = torch.tensor([r[1] for r in rows], dtype=torch.bool)
    raw = {
        h: torch.randn(len(rows), k, generator=g).requires_grad_(requires_grad)
        for h in ("frontal", "lateral", "joint")
    }
    ran = {"frontal": has_f, "lateral": has_l, "joint": has_f & has_l}
    heads = {h: torch.where(ran[h].unsqueeze(1), raw[h], torch.tensor(NAN)) for h in raw}
    final = torch.where(
        (has_f & has_l).unsqueeze(1),
        heads["joint"],
        torch.where(has_f.unsqueeze(1), heads["frontal"], heads["lateral"]),
    )
    route = torch.where(has_f & has_l, Route.JOINT, torch.where(has_f, Route.FRONTAL, Route.LATERAL))
    return ViewLogits(**heads, final=final, route=route), raw, ran


def test_each_term_is_bce_over_its_rows_and_known_labels():
    rows = [(1, 1), (1, 0), (0, 1), (1, 1)]
    out, raw, ran = logits_for(rows)
    labels = torch.tensor([[1.0, NAN], [0.0, 1.0], [NAN, NAN], [1.0, 0.0]])
    terms = MultiViewLoss(LossSchedule.constant(HeadWeights(1.0, 1.0, 1.0)))(out, labels)
    for head in ("frontal", "lateral", "joint"):
        mask = ran[head].unsqueeze(1) & ~torch.isnan(labels)
        expected = F.binary_cross_entropy_with_logits(raw[head][mask], labels[mask])
        torch.testing.assert_close(terms.heads[head], expected.detach())
        assert terms.counts[head] == int(mask.sum())
    assert terms.counts == {"frontal": 5, "lateral": 3, "joint": 3}
    torch.testing.assert_close(terms.total.detach(), sum(terms.heads.values()))


def test_weights_follow_the_schedule():
    schedule = LossSchedule(start=HeadWeights(0.0, 1.0, 1.0), end=HeadWeights(1.0, 0.2, 0.4), ramp_epochs=4)
    assert schedule.weights(0) == HeadWeights(0.0, 1.0, 1.0)
    mid = schedule.weights(2)
    assert (
        mid.joint == pytest.approx(0.5)
        and mid.frontal == pytest.approx(0.6)
        and mid.lateral == pytest.approx(0.7)
    )
    assert schedule.weights(4) == schedule.weights(40) == HeadWeights(1.0, 0.2, 0.4)
    out, _, _ = logits_for([(1, 1), (1, 0)])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = MultiViewLoss(schedule)
    for epoch in (0, 2, 9):
        terms = loss(out, labels, epoch=epoch)
        w = schedule.weights(epoch)
        expected = sum(w.get(h) * terms.heads[h] for h in ("joint", "frontal", "lateral"))
        torch.testing.assert_close(terms.total.detach(), expected)
        assert terms.weights == w


def test_empty_terms_contribute_zero_and_keep_the_graph():
    out, raw, _ = logits_for([(1, 0), (1, 0)])  # no lateral, no joint rows
    labels = torch.tensor([[1.0, 0.0], [NAN, 1.0]])
    terms = MultiViewLoss()(out, labels)
    assert terms.heads["lateral"] == 0 and terms.heads["joint"] == 0
    assert terms.counts["lateral"] == 0 and terms.counts["joint"] == 0
    assert math.isfinite(float(terms.total.detach())) and terms.total.requires_grad
    terms.total.backward()
    assert torch.isfinite(raw["frontal"].grad).all()
    assert (raw["lateral"].grad == 0).all() and (raw["joint"].grad == 0).all()


def test_all_labels_unknown_gives_zero_not_nan():
    out, raw, _ = logits_for([(1, 1)])
    terms = MultiViewLoss()(out, torch.full((1, 2), NAN))
    assert float(terms.total.detach()) == 0.0
    terms.total.backward()
    assert all(torch.isfinite(r.grad).all() for r in raw.values())


def test_gradient_reaches_each_head_only_from_its_rows():
    rows = [(1, 1), (1, 0), (0, 1)]
    out, raw, ran = logits_for(rows)
    labels = torch.tensor([[1.0, 0.0], [0.0, NAN], [1.0, 1.0]])
    MultiViewLoss()(out, labels).total.backward()
    known = ~torch.isnan(labels)
    for head, rows_ran in ran.items():
        should = rows_ran.unsqueeze(1) & known
        grad = raw[head].grad
        assert (grad[~should] == 0).all(), head
        assert (grad[should] != 0).all(), head


def test_pos_weight_weights_positives():
    out, raw, _ = logits_for([(1, 0)], k=2)
    labels = torch.tensor([[1.0, 0.0]])
    plain = MultiViewLoss(LossSchedule.constant(HeadWeights(0, 1, 0)))(out, labels).total
    weighted = MultiViewLoss(
        LossSchedule.constant(HeadWeights(0, 1, 0)), pos_weight=torch.tensor([3.0, 3.0])
    )(out, labels).total
    pos_term = F.binary_cross_entropy_with_logits(raw["frontal"][0, 0], torch.tensor(1.0))
    # mean over 2 entries: the positive one counts 3x instead of 1x
    torch.testing.assert_close((weighted - plain).detach(), pos_term.detach())


def test_class_pos_weight_counts_known_labels_only():
    labels = torch.tensor([[1.0, 0.0], [0.0, NAN], [0.0, 0.0], [0.0, NAN]])
    # column 0: 3 negatives / 1 positive; column 1: 2 negatives, no positive (counted as 1)
    torch.testing.assert_close(class_pos_weight(labels), torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(class_pos_weight(labels, max_weight=2.5), torch.tensor([2.5, 2.0]))


def test_loss_on_a_real_network_backpropagates_once():
    net = TwoViewNet(ModelConfig.tiny(labels=("a", "b", "c", "d", "e"))).train()
    frontal, lateral, has_f, has_l = make_batch(MIXED)
    labels = torch.randint(0, 2, (len(MIXED), 5)).float()
    labels[0, 1] = NAN
    terms = MultiViewLoss()(net(frontal, lateral, has_f, has_l), labels)
    terms.total.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_view_dropout_only_drops_one_view_of_two_view_rows():
    has_f = torch.tensor([1, 1, 0] * 200, dtype=torch.bool)
    has_l = torch.tensor([1, 0, 1] * 200, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    new_f, new_l = view_dropout(has_f, has_l, p=0.5, generator=g)
    assert (new_f | new_l).all()  # no row loses both views
    assert torch.equal(new_f[~(has_f & has_l)], has_f[~(has_f & has_l)])
    assert torch.equal(new_l[~(has_f & has_l)], has_l[~(has_f & has_l)])
    both_rows = has_f & has_l
    dropped = both_rows & ~(new_f & new_l)
    assert 70 < int(dropped.sum()) < 130  # about half of 200
    assert int((dropped & ~new_f).sum()) > 20 and int((dropped & ~new_l).sum()) > 20
    same = view_dropout(has_f, has_l, p=0.0)
    assert torch.equal(same[0], has_f) and torch.equal(same[1], has_l)
    with pytest.raises(ConfigError):
        view_dropout(has_f, has_l, p=1.5)
