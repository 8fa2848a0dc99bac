"""How `Predictor` feeds the model: one study per worker task, batches made here in study order, the
next batch launched before the last one is read back on CUDA, and the default worker count."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from models.config import ModelConfig
from models.twoview import TwoViewNet
from pipeline import data, predict
from pipeline.data import batched, prefetch_factor
from pipeline.predict import Predictor, default_batch_size, default_workers
from pipeline.studies import scan_folder
from tests.pipeline.conftest import write_dicom


@pytest.fixture(scope="module")
def eleven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eleven single-view studies and one whose only file is cut short."""
    root = tmp_path_factory.mktemp("eleven")
    for i in range(11):
        write_dicom(root / f"s{i:02d}.dcm", study_uid=f"1.2.{i + 10}", view_position="PA", seed=i)
    cut = write_dicom(root / "cut.dcm", study_uid="1.2.5", view_position="PA", seed=99)
    cut.write_bytes(cut.read_bytes()[:4000])
    return root


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(TwoViewNet(ModelConfig.tiny(labels=("a", "b"))), device="cpu", fast=False)


def test_batches_are_consecutive_and_the_last_may_be_short() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []


def test_prefetch_keeps_two_batches_in_flight() -> None:
    assert prefetch_factor(32, 15) * 15 >= 64 and prefetch_factor(32, 15) == 5
    assert prefetch_factor(8, 1) == 16 and prefetch_factor(2, 8) == 2


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_default_workers_take_every_core_on_the_cpu_and_leave_one_to_feed_a_gpu(
    cores: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict, "usable_cores", lambda: cores)
    assert default_workers("cpu") == (cores if cores > 1 else 0) == default_workers()
    assert default_workers(torch.device("cuda")) == cores - 1


def test_the_default_batch_is_small_on_the_cpu_and_64_on_a_gpu(
    eleven: Path, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU each model call costs the main thread ~1,300 launches whatever its size: 64 studies a call."""
    assert default_batch_size("cpu") == default_batch_size() == 8
    assert predict._check_settings(None, None, torch.device("cuda"))[0] == 64
    assert predict._check_settings(3, 0, torch.device("cuda")) == (3, 0)
    sizes: list[int] = []
    real = predict.batched

    def batching(items, size):
        sizes.append(size)
        return real(items, size)

    monkeypatch.setattr(predict, "batched", batching)
    chunks = list(predictor.iter_predictions(scan_folder(eleven).studies, workers=0))
    assert sizes == [8] and len(chunks[0]) == 8 and all(len(c) <= 8 for c in chunks)


class _Timed:
    """A runner that takes 50 ms per file and notes, in a file, when each decode starts (in any process)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self, fn, path, *args, **kwargs):
        start = time.monotonic()  # one clock for every process on Linux
        time.sleep(0.05)
        with self.log.open("a") as out:
            out.write(f"{start}\n")
        return fn(path, *args, **kwargs)


def _model_windows(predictor: Predictor) -> list[list[float]]:
    """Hooks that make each model call last 0.2 s and note when it starts and ends."""
    windows: list[list[float]] = []
    model = predictor.model
    model.register_forward_pre_hook(lambda *_: windows.append([time.monotonic()]) or time.sleep(0.2))
    model.register_forward_hook(lambda *_: windows[-1].append(time.monotonic()))
    return windows


def _started_inside(log: Path, windows: list[list[float]]) -> list[float]:
    """Decodes that started while the model ran (10 ms after it started: a worker that passed the gate
    just before it closed may start that late)."""
    starts = [float(line) for line in log.read_text().split()]
    return [t for t in starts for begin, end in windows if begin + 0.01 < t < end]


@pytest.fixture
def timed(eleven: Path, tmp_path: Path) -> tuple:
    """A tiny CPU predictor whose calls last 0.2 s and note when, a file for the decodes, the studies."""
    torch.manual_seed(0)
    predictor = Predictor(TwoViewNet(ModelConfig.tiny(labels=("a", "b"))), device="cpu", fast=False)
    return predictor, _model_windows(predictor), tmp_path / "decodes.txt", scan_folder(eleven).studies


def test_on_the_cpu_workers_decode_only_while_the_model_waits(timed: tuple) -> None:
    """The model's threads take every core, so the workers hold back while it runs (`Gate`)."""
    predictor, windows, log, studies = timed
    chunks = list(predictor.iter_predictions(studies, batch_size=4, workers=2, runner=_Timed(log)))
    assert [p.study_id for c in chunks for p in c] == [s.study_id for s in studies]
    assert len(windows) == 3 and len(log.read_text().split()) == 12
    assert _started_inside(log, windows) == []
    assert any(t > windows[0][1] for t in map(float, log.read_text().split()))  # not all decoded up front


@pytest.mark.parametrize("workers", [0, 2])
def test_studies_come_back_in_order_in_batches(eleven: Path, predictor: Predictor, workers: int) -> None:
    studies = scan_folder(eleven).studies
    chunks = list(predictor.iter_predictions(studies, batch_size=4, workers=workers))
    assert [len(c) for c in chunks] == [4, 4, 4]
    assert [p.study_id for c in chunks for p in c] == [s.study_id for s in studies]
    failed = [p for c in chunks for p in c if not p.ok]
    assert [p.study_id for p in failed] == ["1.2.5"] and "cannot be decoded" in failed[0].errors[0].reason


def spy_on_dataloader(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The keyword arguments `study_loader`'s next DataLoader is made with (filled in when it is made)."""
    made: dict = {}
    real = data._StudyLoader

    def spy(*args, **kwargs):
        made.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "_StudyLoader", spy)
    return made


def test_workers_decode_single_studies_not_batches(
    eleven: Path, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = spy_on_dataloader(monkeypatch)
    list(predictor.iter_predictions(scan_folder(eleven).studies, batch_size=4, workers=2))
    assert made["batch_size"] is None and made["num_workers"] == 2
    assert made["prefetch_factor"] == prefetch_factor(4, 2)


def test_on_cuda_the_next_batch_is_launched_before_the_last_is_read(
    eleven: Path, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of events with a (pretend) CUDA device: launch 0, launch 1, read 0, launch 2, ..."""
    events: list[str] = []
    launch, finish = Predictor._launch, Predictor._finish

    def launching(self, batch):
        events.append(f"launch {len(events)}")
        return launch(self, batch)

    def finishing(running):
        events.append("read")
        return finish(running)

    monkeypatch.setattr(Predictor, "_launch", launching)
    monkeypatch.setattr(Predictor, "_finish", staticmethod(finishing))
    studies = scan_folder(eleven).studies
    monkeypatch.setattr(predictor, "device", torch.device("cuda"))
    monkeypatch.setattr(predict.ViewBatch, "pin_memory", lambda self: self)  # no GPU here
    monkeypatch.setattr(predict.ViewBatch, "to", lambda self, device, non_blocking=False: self)
    pins: list[bool] = []

    def collating(samples, *, pin=False):
        pins.append(pin)
        return data.collate(samples)  # pinned memory needs a GPU

    monkeypatch.setattr(predict, "collate", collating)
    chunks = list(predictor.iter_predictions(studies, batch_size=4, workers=0))
    assert [e.split()[0] for e in events] == ["launch", "launch", "read", "launch", "read", "read"]
    assert [p.study_id for c in chunks for p in c] == [s.study_id for s in studies]
    assert pins == [True] * 3  # batches are stacked into pinned memory, not copied there at launch


def test_predict_batch_reads_back_every_head_in_one_copy(eleven: Path, predictor: Predictor) -> None:
    from pipeline.data import StudyDataset, collate

    dataset = StudyDataset(scan_folder(eleven).studies[:3], config=predictor.config)
    batch = collate([dataset[i] for i in range(3)])
    running = predictor._launch(batch)
    assert running.heads.shape == (5, 3, 2)
    out = predictor._finish(running)
    assert out.routes == ["frontal"] * 3 and out.route.dtype == torch.int64
    assert torch.isnan(out.lateral).all() and not torch.isnan(out.final).any()


def test_fast_batches_come_in_the_models_dtype_with_the_same_probabilities(tmp_path: Path) -> None:
    """On the fast path the workers cast the images to the dtype the model computes in, as autocast's
    first step would: half the bytes to receive, stack and copy to the device, and the same probabilities
    as float32 batches. Off the fast path the batches stay float32."""
    for i in range(3):
        for view in ("PA", "LL"):
            write_dicom(tmp_path / f"s{i}{view}.dcm", study_uid=f"1.2.{i}", view_position=view, seed=2 * i)
    write_dicom(tmp_path / "single.dcm", study_uid="1.2.9", view_position="LL", seed=9)
    studies = scan_folder(tmp_path).studies
    torch.manual_seed(0)
    model = TwoViewNet(ModelConfig.tiny(labels=("a", "b")))

    def predicted(dtype: torch.dtype) -> list:
        predictor = Predictor(model, device="cpu")
        predictor.model.fast(torch.bfloat16)  # bfloat16 autocast on any CPU, not only where it is fast
        predictor.batch_dtype = dtype
        batches = [loaded.batch for loaded in predictor.batches(studies, batch_size=3, workers=1)]
        assert {b.frontal.dtype for b in batches} == {b.lateral.dtype for b in batches} == {dtype}
        return predictor.predict_studies(studies, batch_size=3, workers=1)

    half, full = predicted(torch.bfloat16), predicted(torch.float32)
    assert [p.route for p in half] == [p.route for p in full] == ["joint"] * 3 + ["lateral"]
    for name in ("frontal", "lateral", "joint", "final"):
        for mine, theirs in zip(half, full, strict=True):
            a, b = getattr(mine, name), getattr(theirs, name)
            assert a.keys() == b.keys() and all((a[k] is None) == (b[k] is None) for k in a)
            assert all(abs(a[k] - b[k]) <= 1e-6 for k in a if a[k] is not None), (name, a, b)
    assert Predictor(model, device="cpu", fast=False).batch_dtype == torch.float32


def test_batch_values_are_read_once_per_batch_with_nan_as_none(eleven: Path) -> None:
    """A batch's heads and routes become Python values in one read; a head that did not run gives None."""
    from models.twoview import ViewLogits
    from pipeline.predict import BatchValues, study_prediction

    nan = float("nan")
    frontal = torch.tensor([[0.25, 0.5], [nan, nan]])
    lateral = torch.tensor([[nan, nan], [0.75, 0.125]])
    probs = ViewLogits(
        frontal,
        lateral,
        torch.full((2, 2), nan),
        torch.tensor([[0.25, 0.5], [0.75, 0.125]]),
        route=torch.tensor([1, 2]),
    )
    values = BatchValues.of(probs)
    assert values.routes == ["frontal", "lateral"] and values.routes == probs.routes
    assert values.heads["final"] == [[0.25, 0.5], [0.75, 0.125]]
    study = scan_folder(eleven).studies[0]
    second = study_prediction(study, values, 1, (), ("a", "b"), {"b": 0.1})
    assert second.route == "lateral" and second.final == {"a": 0.75, "b": 0.125} and second.calls == {"b": 1}
    assert second.frontal == {"a": None, "b": None} and second.joint == {"a": None, "b": None}


def test_a_checkpoint_is_loaded_after_the_workers_start(
    eleven: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a checkpoint's path, the first batch is decoded while the model loads: workers first."""
    from models.checkpoint import save

    torch.manual_seed(0)
    net = TwoViewNet(ModelConfig.tiny(labels=("a", "b")))
    path = save(net, tmp_path / "m.safetensors")
    events: list[str] = []
    real_iter, real_load = data.DataLoader.__iter__, predict.load

    def starting(self):
        events.append(f"workers start ({self.num_workers})")
        return real_iter(self)

    def loading(*args, **kwargs):
        events.append("model loads")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(data.DataLoader, "__iter__", starting)
    monkeypatch.setattr(predict, "load", loading)
    lazy = Predictor(path, device="cpu", fast=False)
    assert lazy.config == net.config and lazy.labels == ("a", "b") and events == []
    studies = scan_folder(eleven).studies
    chunks = list(lazy.iter_predictions(studies, batch_size=4, workers=1))
    assert events == ["workers start (1)", "model loads"]
    eager = Predictor(net, device="cpu", fast=False).predict_studies(studies, batch_size=4)
    assert [p.final for c in chunks for p in c] == [p.final for p in eager]


def test_a_checkpoint_replaced_before_it_loads_is_refused(eleven: Path, tmp_path: Path) -> None:
    """The batches were preprocessed with the config read from the header: another model is not used."""
    from models.checkpoint import save
    from models.errors import CheckpointError

    path = save(TwoViewNet(ModelConfig.tiny(labels=("a", "b"))), tmp_path / "m.safetensors")
    lazy = Predictor(path, device="cpu", fast=False)
    save(TwoViewNet(ModelConfig.tiny(labels=("c", "d"))), path)
    with pytest.raises(CheckpointError, match="changed while it was in use"):
        list(lazy.iter_predictions(scan_folder(eleven).studies, batch_size=4, workers=0))


def test_evaluation_workers_also_decode_only_while_the_model_waits(timed: tuple) -> None:
    from pipeline.data import StudyDataset
    from pipeline.evaluate import predict_labelled

    predictor, windows, log, studies = timed
    labels = torch.ones(len(studies), 2).numpy()
    dataset = StudyDataset(studies, labels, config=predictor.config, runner=_Timed(log))
    out = predict_labelled(predictor, dataset, batch_size=4, workers=2)
    assert len(out.study_ids) == 11 and len(windows) == 3
    assert _started_inside(log, windows) == []


def test_evaluation_workers_decode_single_studies_in_order(
    eleven: Path, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import evaluate
    from pipeline.data import StudyDataset

    made = spy_on_dataloader(monkeypatch)
    studies = scan_folder(eleven).studies
    labels = torch.arange(2 * len(studies), dtype=torch.float32).reshape(-1, 2).numpy()
    dataset = StudyDataset(studies, labels, config=predictor.config)
    out = evaluate.predict_labelled(predictor, dataset, batch_size=4, workers=2)
    assert made["batch_size"] is None and made["prefetch_factor"] == prefetch_factor(4, 2)
    assert made["worker_init_fn"] is not None
    kept = [s.study_id for s in studies if s.study_id != "1.2.5"]  # its only image cannot be decoded
    assert out.study_ids == kept
    rows = [i for i, s in enumerate(studies) if s.study_id != "1.2.5"]
    torch.testing.assert_close(out.labels, torch.from_numpy(labels[rows]))
