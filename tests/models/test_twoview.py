"""TwoViewNet: per-row routing, compute skipping, branch independence, the fast path, the real size."""

from __future__ import annotations

import copy

import pytest
import torch

from models import ModelConfig, Route, RoutingError, TwoViewNet, ViewLogits
from models.twoview import HEADS

# (has_frontal, has_lateral) per row: two-view, frontal-only, lateral-only, mixed in one batch.
MIXED = [(1, 1), (1, 0), (0, 1), (1, 1), (0, 1), (1, 0), (1, 1)]


def make_batch(rows, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(rows)
    frontal = torch.randn(b, 1, size, size, generator=g)
    lateral = torch.randn(b, 1, size, size, generator=g)
    has_f = torch.tensor([r[0] for r in rows], dtype=torch.bool)
    has_l = torch.tensor([r[1] for r in rows], dtype=torch.bool)
    return frontal, lateral, has_f, has_l


@pytest.fixture
def net():
    torch.manual_seed(0)
    return TwoViewNet(ModelConfig.tiny()).eval()


def test_routing_equivalence_with_rows_run_alone(net):
    frontal, lateral, has_f, has_l = make_batch(MIXED)
    with torch.no_grad():
        batched = net(frontal, lateral, has_f, has_l)
        for i in range(len(MIXED)):
            alone = net(frontal[i : i + 1], lateral[i : i + 1], has_f[i : i + 1], has_l[i : i + 1])
            for head in (*HEADS, "final"):
                a, b = batched.head(head)[i], alone.head(head)[0]
                assert torch.equal(torch.isnan(a), torch.isnan(b)), head
                torch.testing.assert_close(a, b, atol=1e-4, rtol=0, equal_nan=True)


def test_heads_are_nan_exactly_where_they_did_not_run(net):
    frontal, lateral, has_f, has_l = make_batch(MIXED)
    with torch.no_grad():
        out = net(frontal, lateral, has_f, has_l)
    ran = {"frontal": has_f, "lateral": has_l, "joint": has_f & has_l}
    for head, rows in ran.items():
        logits = out.head(head)
        assert logits.shape == (len(MIXED), net.config.num_labels)
        assert torch.isnan(logits[~rows]).all() and not torch.isnan(logits[rows]).any(), head
    assert not torch.isnan(out.final).any()
    expected = ["joint", "frontal", "lateral", "joint", "lateral", "frontal", "joint"]
    assert out.routes == expected
    torch.testing.assert_close(out.final[has_f & has_l], out.joint[has_f & has_l])
    torch.testing.assert_close(out.final[has_f & ~has_l], out.frontal[has_f & ~has_l])
    torch.testing.assert_close(out.final[~has_f], out.lateral[~has_f])


def test_missing_view_pixels_never_matter(net):
    frontal, lateral, has_f, has_l = make_batch(MIXED)
    noisy_f, noisy_l = frontal.clone(), lateral.clone()
    noisy_f[~has_f] = 1e6  # garbage where the view is absent
    noisy_l[~has_l] = float("nan")
    with torch.no_grad():
        a = net(frontal, lateral, has_f, has_l)
        b = net(noisy_f, noisy_l, has_f, has_l)
    torch.testing.assert_close(a.final, b.final)


def _record_rows(module, log, name):
    return module.register_forward_hook(
        lambda m, inputs, out: log.setdefault(name, []).append(inputs[0].shape[0])
    )


def test_compute_skipping_seen_by_hooks(net):
    frontal, lateral, has_f, has_l = make_batch(MIXED)
    log: dict[str, list[int]] = {}
    hooks = [
        _record_rows(net.frontal.trunk, log, "frontal_trunk"),
        _record_rows(net.lateral.trunk, log, "lateral_trunk"),
        _record_rows(net.lateral.tail, log, "lateral_tail"),
        _record_rows(net.joint.fusion, log, "fusion"),
    ]
    # Check the lateral trunk sees exactly the lateral rows' pixels, not just their count.
    seen = []
    hooks.append(net.lateral.trunk.register_forward_hook(lambda m, i, o: seen.append(i[0].clone())))
    with torch.no_grad():
        net(frontal, lateral, has_f, has_l)
    assert log == {
        "frontal_trunk": [int(has_f.sum())],
        "lateral_trunk": [int(has_l.sum())],
        "lateral_tail": [int(has_l.sum())],
        "fusion": [int((has_f & has_l).sum())],
    }
    torch.testing.assert_close(seen[0], lateral[has_l])

    log.clear()
    f_only = make_batch([(1, 0)] * 4)
    with torch.no_grad():
        out = net(*f_only)
    for h in hooks:
        h.remove()
    assert log == {"frontal_trunk": [4]}
    assert out.routes == ["frontal"] * 4


def test_row_with_no_view_is_an_error(net):
    frontal, lateral, has_f, has_l = make_batch([(1, 1), (0, 0), (1, 0)])
    with pytest.raises(RoutingError, match=r"rows \[1\] have neither"):
        net(frontal, lateral, has_f, has_l)


def test_mask_shape_mismatch_is_an_error(net):
    frontal, lateral, has_f, has_l = make_batch([(1, 1), (1, 0)])
    with pytest.raises(RoutingError, match="masks"):
        net(frontal, lateral, has_f[:1], has_l)


def test_branches_are_independent_copies():
    net = TwoViewNet(ModelConfig.tiny())
    frontal = dict(net.frontal.named_parameters())
    lateral = dict(net.lateral.named_parameters())
    assert frontal.keys() == lateral.keys()
    storages = {p.untyped_storage().data_ptr() for p in frontal.values()}
    assert not storages & {p.untyped_storage().data_ptr() for p in lateral.values()}
    assert not storages & {p.untyped_storage().data_ptr() for p in net.joint.parameters()}
    for name in frontal:  # same start, by copying
        assert torch.equal(frontal[name], lateral[name])
    with torch.no_grad():
        next(iter(net.frontal.parameters())).add_(1.0)
    assert not torch.equal(next(iter(net.frontal.parameters())), next(iter(net.lateral.parameters())))


def test_parameter_names_tell_their_branch():
    net = TwoViewNet(ModelConfig.tiny())
    for name, _ in net.named_parameters():
        branch = name.split(".")[0]
        assert branch in HEADS
        assert ("frontal" in name) == (branch == "frontal")
        assert ("lateral" in name) == (branch == "lateral")
    assert any(n.startswith("frontal.trunk.denseblock3.") for n, _ in net.named_parameters())
    assert any(n.startswith("lateral.tail.denseblock4.") for n, _ in net.named_parameters())
    assert any(n.startswith("joint.fusion.") for n, _ in net.named_parameters())


def test_frontal_only_backward_leaves_lateral_and_fusion_without_gradient():
    net = TwoViewNet(ModelConfig.tiny()).train()
    out = net(*make_batch([(1, 0)] * 3))
    out.final.sum().backward()
    for name, p in net.named_parameters():
        if name.startswith("frontal."):
            assert p.grad is not None, name
        else:
            assert p.grad is None, name


def test_fast_path_matches_float32():
    """`fast()` stays within 0.02 of float32, and `plain()` gives float32 back. The logits are compared
    with logits: through sigmoid and back, a float32 rounding of the probability near 0 or 1 became a
    logit error of up to 4e-5, which failed this test now and then."""
    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(image_size=64)).eval()
    batch = make_batch(MIXED)
    with torch.no_grad():
        reference = net(*batch)
        fast = net.fast(torch.bfloat16)(*batch)
    assert fast.final.dtype == torch.float32
    assert (fast.final.sigmoid() - reference.final.sigmoid()).abs().max() < 0.02
    net.plain()
    with torch.no_grad():
        torch.testing.assert_close(net(*batch).final, reference.final)


def test_channels_last_trains_as_contiguous():
    """The training layout changes memory order only: same outputs and gradients, within float error."""
    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(image_size=64)).train()
    batch = make_batch(MIXED)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        net.zero_grad()
        final = net(*batch).final
        final.nan_to_num().sum().backward()
        return final, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    reference, grads = step()
    net.channels_last()
    convs = [p for p in net.parameters() if p.ndim == 4 and p.shape[2:] != (1, 1)]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    final, last_grads = step()
    torch.testing.assert_close(final, reference, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert last_grads.keys() == grads.keys()
    for name, grad in last_grads.items():
        torch.testing.assert_close(grad, grads[name], rtol=1e-3, atol=1e-5, msg=name)
    net.channels_last(False)
    assert all(p.is_contiguous() for p in net.parameters())


def test_view_logits_sigmoid_keeps_nan_and_routes(net):
    with torch.no_grad():
        out = net(*make_batch(MIXED))
    probs = out.sigmoid()
    assert isinstance(probs, ViewLogits)
    assert torch.equal(torch.isnan(probs.joint), torch.isnan(out.joint))
    assert ((probs.final >= 0) & (probs.final <= 1)).all()
    assert probs.route.tolist() == [Route[r.upper()] for r in out.routes]
    with pytest.raises(KeyError, match="unknown head"):
        out.head("axial")


@pytest.mark.slow
def test_real_densenet121_size_runs_at_224():
    net = TwoViewNet(ModelConfig()).eval()
    counts = {h: sum(p.numel() for p in getattr(net, h).parameters()) for h in HEADS}
    assert 6.9e6 < counts["frontal"] < 7.1e6  # DenseNet121 without its ImageNet classifier: ~6.95M
    assert counts["frontal"] == counts["lateral"]
    with torch.no_grad():
        out = net(*make_batch([(1, 1), (1, 0), (0, 1)], size=224))
    assert out.final.shape == (3, 5) and not torch.isnan(out.final).any()
    assert out.routes == ["joint", "frontal", "lateral"]


def test_compiled_parts_give_the_eager_outputs_and_gradients():
    """`compile()` compiles each branch and the fusion as one graph each (no breaks), for every sub-batch
    size, in training and in inference, with the eager network's numbers and the same state-dict keys.

    The backend is torch's `aot_eager`: the graphs captured and differentiated as inductor gets them,
    run without its code generation, which takes minutes per graph on this 2-core CPU.
    """
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()  # reset() leaves them: other tests of this process may have compiled before
    torch.manual_seed(0)
    eager = TwoViewNet(ModelConfig.tiny(dropout=0.0, head_dropout=0.0)).train().channels_last()
    compiled = copy.deepcopy(eager)
    compiled.compile(backend="aot_eager")
    assert list(compiled.state_dict()) == list(eager.state_dict())
    try:
        for rows in (MIXED, MIXED[1:], [(1, 1), (1, 1), (0, 1)]):  # 5, 4 and 2 frontal rows
            batch = make_batch(rows)
            outputs = [net(*batch) for net in (eager, compiled)]
            for out in outputs:
                (out.final.sum() + out.frontal.nansum() + out.lateral.nansum()).backward()
            for name in ("frontal", "lateral", "joint", "final"):
                torch.testing.assert_close(outputs[1].head(name), outputs[0].head(name), equal_nan=True)
            for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
                torch.testing.assert_close(b.grad, a.grad, msg=name)
                a.grad = b.grad = None
        with torch.inference_mode():
            batch = make_batch(MIXED, seed=1)
            torch.testing.assert_close(
                compiled.eval()(*batch).final, eager.eval()(*batch).final, equal_nan=True
            )
        assert not counters["graph_break"]
        assert 3 <= counters["stats"]["unique_graphs"] <= 12  # each part: static, then dynamic batch; eval
    finally:
        torch._dynamo.reset()
