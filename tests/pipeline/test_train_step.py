"""The training step on a GPU-sized budget: no value read back from the device per step, few batch shapes,
and the Trainer settings that read logged values back only now and then.

Without a GPU, the device here is PyTorch's "meta" device: tensors with shapes but no values. Any
operation that needs a value on the device (`.item()`, `int()`, `nonzero`, `if t.any()`) fails on it,
so a training step that runs there is one that never waits for the GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline import train
from pipeline.data import ViewBatch
from pipeline.train import SHAPE_BUCKET, TwoViewModule

LABELS = ("a", "b")
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


def module(net: TwoViewNet) -> TwoViewModule:
    return TwoViewModule(
        net,
        pos_weight=[1.0, 2.0],
        lr=1e-3,
        weight_decay=0.0,
        warmup_epochs=0.0,
        head_weights_start=(1.0, 1.0, 1.0),
        head_weights_end=(1.0, 1.0, 1.0),
        ramp_epochs=1,
        view_dropout=0.5,
    )


def batch(rows: int = 11, size: int = 32) -> ViewBatch:
    """A mixed batch: two-view, frontal-only and lateral-only rows, some labels unknown."""
    has_frontal = torch.tensor([i % 3 != 2 for i in range(rows)])
    has_lateral = torch.tensor([i % 3 != 1 for i in range(rows)])
    labels = torch.randint(0, 2, (rows, len(LABELS))).float()
    labels[0, 1] = float("nan")
    images = torch.rand(rows, 1, size, size)
    return ViewBatch(images, images.clone(), has_frontal, has_lateral, labels, [str(i) for i in range(rows)])


def test_a_training_step_reads_nothing_back_from_the_device() -> None:
    torch.manual_seed(0)
    step = module(TwoViewNet(ModelConfig.tiny(labels=LABELS, image_size=32))).to("meta")
    step.net.shape_bucket = SHAPE_BUCKET
    on_device = step.transfer_batch_to_device(batch(), torch.device("meta"), 0)
    assert on_device.frontal.is_meta and on_device.labels.is_meta
    assert on_device.has_frontal.device.type == "cpu"  # the masks stay on the host
    loss = step.training_step(on_device, 0)
    assert loss.is_meta and loss.shape == ()
    loss.backward()
    assert all(p.grad is not None for p in step.net.frontal.trunk.parameters())


def test_the_same_step_with_masks_on_the_device_would_wait_for_it() -> None:
    """The check above can fail: masks on the device make the router read them (nonzero)."""
    step = module(TwoViewNet(ModelConfig.tiny(labels=LABELS, image_size=32))).to("meta")
    on_device = batch().to("meta")
    with pytest.raises((NotImplementedError, RuntimeError)):
        step.training_step(on_device, 0)


def test_bucketed_rows_give_the_same_outputs_and_few_shapes() -> None:
    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(labels=LABELS, image_size=32)).eval()
    seen: list[int] = []
    net.frontal.trunk.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    b = batch(rows=13)
    with torch.inference_mode():
        exact = net(b.frontal, b.lateral, b.has_frontal, b.has_lateral)
        net.shape_bucket = 8
        padded = net(b.frontal, b.lateral, b.has_frontal, b.has_lateral)
    assert seen == [int(b.has_frontal.sum()), 16]  # 9 frontal rows padded to 16
    for name in ("frontal", "lateral", "joint", "final"):
        torch.testing.assert_close(getattr(padded, name), getattr(exact, name), equal_nan=True)
    assert torch.equal(padded.route, exact.route)


def test_fit_turns_buckets_on_only_on_a_gpu() -> None:
    step = module(TwoViewNet(ModelConfig.tiny(labels=LABELS)))
    step.on_fit_start()
    assert step.net.shape_bucket is None  # on the CPU: exact sizes
    step.net.shape_bucket = 8
    step.on_fit_end()
    assert step.net.shape_bucket is None


@pytest.mark.parametrize("gpu", [False, True])
def test_trainer_reads_logs_back_every_step_on_cpu_and_now_and_then_on_gpu(
    gpu: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: dict = {}
    monkeypatch.setattr(train, "_uses_gpu", lambda accelerator: gpu)
    monkeypatch.setattr(train.pl, "Trainer", lambda **kwargs: made.update(kwargs))
    train._trainer(train.TrainSettings(out_dir=str(tmp_path), precision="32-true"), tmp_path)
    every = train.GPU_LOG_EVERY if gpu else 1
    assert made["log_every_n_steps"] == every and made["benchmark"] is gpu
    bars = [c for c in made["callbacks"] if isinstance(c, train.TQDMProgressBar)]
    assert [b.refresh_rate for b in bars] == [every]
