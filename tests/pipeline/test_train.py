"""Fine-tuning with a real Lightning Trainer on the bundled sample studies (tiny network, 64 px)."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from models.checkpoint import load, read_config
from models.config import SYNTHETIC_NOTICE, ModelConfig
from models.losses import MultiViewLoss
from models.twoview import TwoViewNet, fast_dtype
from pipeline.data import StudyDataset, collate
from pipeline.datamodule import StudyDataModule, patient_split
from pipeline.errors import TrainError
from pipeline.manifest import read_manifest
from pipeline.runs import read_metrics
from pipeline.settings import TrainSettings
from pipeline.start_model import build_start_model
from pipeline.train import TwoViewModule, _trainer, fit

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "studies"
MANIFEST = SAMPLES / "labels.csv"
TINY = ["--arch", "tiny", "--start", "scratch", "--image-size", "64", "--batch-size", "4", "--workers", "0"]


def settings(out: Path, **overrides) -> TrainSettings:
    base = dict(
        manifest=str(MANIFEST),
        out_dir=str(out),
        arch="tiny",
        start="scratch",
        image_size=64,
        batch_size=4,
        workers=0,
        epochs=2,
        lr=3e-3,
        view_dropout=0.0,
        head_weights_start=(1.0, 1.0, 1.0),
        head_weights_end=(1.0, 1.0, 1.0),
    )
    base.update(overrides)
    return TrainSettings(**base)


def twoview(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["twoview", *args], capture_output=True, text=True, timeout=300, env=env, **kwargs)


def test_patient_split_keeps_patients_whole_and_covers_labels():
    manifest = read_manifest(MANIFEST)
    train, val = patient_split(manifest, 0.25, seed=0)
    assert len(train) + len(val) == len(manifest)
    assert not set(train.patient_ids) & set(val.patient_ids)
    assert abs(len(val) - 0.25 * len(manifest)) <= 2
    for j, name in enumerate(manifest.label_names):
        column = manifest.labels[:, j]
        if (column == 1).sum() >= 2:  # labels with positives to spare get one in validation
            assert (val.labels[:, j] == 1).any(), name
    again = patient_split(manifest, 0.25, seed=0)[1]
    assert [s.study_id for s in again.studies] == [s.study_id for s in val.studies]


def training_loss(net) -> float:
    """The multi-head loss of `net` on the whole sample set, in eval mode, without augmentation."""
    data = StudyDataset.from_manifest(read_manifest(MANIFEST), config=net.config)
    batch = collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        logits = net.eval()(batch.frontal, batch.lateral, batch.has_frontal, batch.has_lateral)
    return float(MultiViewLoss()(logits, batch.labels).total)


class LayoutProbe(pl.Callback):
    """Records the precision and the weights' memory layout the Trainer trains with."""

    def __init__(self) -> None:
        self.module = None
        self.layouts: set[bool] = set()
        self.precision = ""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.module, self.precision = module, trainer.precision
        convs = [p for p in module.net.parameters() if p.ndim == 4 and p.shape[2:] != (1, 1)]
        self.layouts |= {p.is_contiguous(memory_format=torch.channels_last) for p in convs}


def tiny_config() -> ModelConfig:
    return ModelConfig.tiny(image_size=64, labels=tuple(read_manifest(MANIFEST).label_names))


class _WorkerLog:
    """A decode runner that notes, in a file, which DataLoader worker decoded each file."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self, fn, path, *args, **kwargs):
        info = torch.utils.data.get_worker_info()
        with self.log.open("a") as out:
            out.write(f"{info.id if info else -1} {path}\n")
        return fn(path, *args, **kwargs)


def test_workers_share_each_batch_from_the_first_of_the_epoch(tmp_path):
    """One study per worker task: the first batch is loaded by both workers, not by one of them alone;
    an epoch is whole batches, and no study of the dropped remainder is loaded."""
    data = StudyDataModule(settings(tmp_path / "run", workers=2, batch_size=4), tiny_config())
    data.setup()
    data.train_set.runner = _WorkerLog(tmp_path / "workers.log")
    loader = data.train_dataloader()
    studies = len(data.train_set)
    assert studies % 4 and len(loader) == studies // 4
    assert isinstance(loader.sampler.sampler, torch.utils.data.RandomSampler)
    batches = list(loader)  # one epoch, from a cold cache
    assert [len(b) for b in batches] == [4] * (studies // 4)
    seen = [s for b in batches for s in b.study_ids]
    assert len(set(seen)) == len(seen)
    by_path = {str(src.path): s.study_id for s in data.train_set.studies for src in s.sources}
    workers: dict[str, set[int]] = {}
    for line in (tmp_path / "workers.log").read_text().splitlines():
        worker, path = line.split(" ", 1)
        workers.setdefault(by_path[path], set()).add(int(worker))
    assert set().union(*(workers[s] for s in batches[0].study_ids)) == {0, 1}
    assert set(workers) == set(seen)  # the remainder's studies were never loaded
    val = data.val_dataloader()
    assert [s for b in val for s in b.study_ids] == [s.study_id for s in data.val_set.studies]  # in order


def test_under_ddp_each_rank_loads_its_own_share(tmp_path):
    ranks = []
    for rank in (0, 1):
        data = StudyDataModule(settings(tmp_path / "run", batch_size=2), tiny_config())
        data.trainer = SimpleNamespace(
            precision="32-true", distributed_sampler_kwargs={"num_replicas": 2, "rank": rank}
        )
        data.setup()
        loader = data.train_dataloader()
        shard = loader.sampler.sampler  # inside the cut to whole batches
        assert isinstance(shard, torch.utils.data.DistributedSampler) and shard.rank == rank
        ranks.append({s for b in loader for s in b.study_ids})
    assert len(ranks[0] & ranks[1]) <= len(data.train_set) % 2  # DistributedSampler pads an odd count
    assert len(ranks[0] | ranks[1]) >= len(data.train_set) - 2 * 2  # each rank drops at most a partial batch


def test_under_mixed_precision_the_batches_come_in_its_dtype(tmp_path):
    """The workers cast the images to the dtype autocast casts them to before the first convolution
    (half the bytes for the training process to take in); at 32-true they stay float32, as do labels."""
    for precision, dtype in [
        ("bf16-mixed", torch.bfloat16),
        ("16-mixed", torch.float16),
        ("32-true", torch.float32),
    ]:
        data = StudyDataModule(settings(tmp_path / "run", batch_size=2), tiny_config())
        data.trainer = SimpleNamespace(precision=precision, distributed_sampler_kwargs=None)
        data.setup()
        for loader in (data.train_dataloader(), data.val_dataloader()):
            batch = next(iter(loader))
            assert batch.frontal.dtype == batch.lateral.dtype == dtype, precision
            assert batch.labels.dtype == torch.float32
    assert data.val_set[0].frontal.dtype == torch.float32  # the dataset itself, as the final report reads it


def test_a_bfloat16_batch_trains_as_its_float32_batch_under_bfloat16_autocast():
    """Nothing before the first convolution computes on the images: with bfloat16 autocast, the batch
    cast in the workers gives the training forward the float32 batch gives (dropout drawn alike)."""
    data = StudyDataset.from_manifest(read_manifest(MANIFEST), config=tiny_config())
    batch = collate([data[i] for i in range(6)])
    torch.manual_seed(0)
    net = TwoViewNet(tiny_config()).train().channels_last()
    outputs = []
    for frontal, lateral in [
        (batch.frontal, batch.lateral),
        (batch.frontal.bfloat16(), batch.lateral.bfloat16()),
    ]:
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs.append(net(frontal, lateral, batch.has_frontal, batch.has_lateral))
    for name in ("frontal", "lateral", "joint", "final"):
        torch.testing.assert_close(
            getattr(outputs[1], name), getattr(outputs[0], name), rtol=0, atol=1e-6, equal_nan=True, msg=name
        )


def test_training_lowers_the_loss_and_leaves_a_complete_run(tmp_path):
    out = tmp_path / "run"
    run = settings(out, epochs=3, batch_size=2, lr=1e-2, warmup_epochs=0.0)
    pl.seed_everything(run.seed, verbose=False)  # as fit does, so this is the network it starts from
    start = training_loss(build_start_model(run, tuple(read_manifest(MANIFEST).label_names)))
    probe = LayoutProbe()
    result = fit(run, callbacks=[probe])
    assert probe.layouts == {True}  # channels-last weights in every step
    assert all(p.is_contiguous() for p in probe.module.net.parameters())  # and contiguous again after
    assert probe.precision == (
        "bf16-mixed" if fast_dtype(torch.device("cpu")) == torch.bfloat16 else "32-true"
    )
    assert training_loss(load(out / "last.safetensors")) < 0.95 * start
    series = read_metrics(out / "metrics.csv")
    assert sorted({epoch for epoch, _ in series["train/loss"]}) == [0, 1, 2]
    for name in (
        "best.safetensors",
        "last.safetensors",
        "report.md",
        "report.json",
        "curves.png",
        "settings.json",
    ):
        assert (out / name).stat().st_size > 0, name
    config = read_config(out / "best.safetensors")
    assert config.provenance["train_studies"] + config.provenance["val_studies"] == len(
        read_manifest(MANIFEST)
    )
    assert set(config.thresholds) <= set(config.labels) and config.thresholds
    assert config.synthetic_only and "(synthetic phantoms), starting from scratch" in config.trained_on
    assert SYNTHETIC_NOTICE in (out / "report.md").read_text()
    net = load(out / "best.safetensors")
    assert net.config.labels == tuple(read_manifest(MANIFEST).label_names)
    assert result.report.heads["final"].n == config.provenance["val_studies"]
    report = (out / "report.md").read_text()
    assert "frontal head alone vs the joint head" in report and "Youden" in report
    assert any(k.startswith("val/auroc_final") for k in series)
    assert "lr-AdamW" in series or any(k.startswith("lr") for k in series)


class CompileProbe(pl.Callback):
    """Notes whether each part of the network runs compiled in training steps and in validation."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, bool]] = set()

    def _note(self, module, stage: str) -> None:
        parts = (module.net.frontal, module.net.lateral, module.net.joint)
        self.seen.add((stage, all(p._compiled_call_impl is not None for p in parts)))

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self._note(module, "train")

    def on_validation_batch_end(self, trainer, module, *args) -> None:
        if not trainer.sanity_checking:
            self._note(module, "val")


def test_a_compiled_network_trains_validates_and_saves_as_an_eager_one(tmp_path):
    """`--compile`: the Trainer's steps and validation run the compiled parts (`TwoViewNet.compile`), and
    the checkpoints hold the same keys, loadable by an eager network.

    Inductor's code generation takes minutes per graph on this 2-core CPU, so the module is given torch's
    `aot_eager` backend (the same captured, differentiated graphs, run without generated code).
    """
    import torch._dynamo

    assert settings(tmp_path, compile=True).to_args()[-1:] == ["--compile"]
    run = settings(tmp_path / "run", epochs=1, batch_size=3)
    pl.seed_everything(0, verbose=False)
    net = TwoViewNet(tiny_config())
    data = StudyDataModule(run, net.config)
    module = TwoViewModule.from_settings(net, run, None)
    assert module.hparams.compile is None  # eager unless asked
    compiled = TwoViewModule.from_settings(net, replace(run, compile=True), None)
    assert compiled.hparams.compile == {}  # torch.compile's defaults: inductor
    module.hparams.compile = {"backend": "aot_eager"}
    probe = CompileProbe()
    trainer = _trainer(run, tmp_path / "run", [probe])
    torch._dynamo.reset()
    try:
        trainer.fit(module, datamodule=data)
    finally:
        torch._dynamo.reset()
    assert probe.seen == {("train", True), ("val", True)}
    assert trainer.global_step > 0 and math.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/auroc_final" in trainer.callback_metrics
    saved = load(tmp_path / "run" / "last.safetensors")
    assert list(saved.state_dict()) == list(TwoViewNet(tiny_config()).state_dict())


def test_compile_without_a_compiler_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine with no compiler on its PATH
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(TrainError, match="needs a C\\+\\+ compiler.*without --compile"):
        fit(settings(tmp_path / "run", compile=True))
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_a_new_label_set_gets_new_heads_from_a_checkpoint(tmp_path, caplog):
    first = tmp_path / "first"
    fit(settings(first, epochs=1))
    subset = tmp_path / "two_labels.csv"
    with open(MANIFEST) as f, open(subset, "w", newline="") as g:
        rows = list(csv.DictReader(f))
        keep = ["study_id", "patient_id", "frontal", "lateral", "nodule", "cardiomegaly"]
        writer = csv.DictWriter(g, keep)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in keep})
    second = tmp_path / "second"
    with caplog.at_level("INFO"):
        fit(
            settings(
                second,
                epochs=1,
                manifest=str(subset),
                images_dir=str(SAMPLES),
                start=str(first / "best.safetensors"),
                arch="densenet121",  # the default: a checkpoint brings its own network
            )
        )
    assert "labels ['nodule', 'cardiomegaly'] differ from the start model's" in caplog.text
    assert load(second / "best.safetensors").config.labels == ("nodule", "cardiomegaly")
    old, new = load(first / "best.safetensors"), load(second / "best.safetensors")
    assert not torch.equal(old.frontal.trunk.conv0.weight, torch.zeros(1))  # loaded, then fine-tuned
    assert new.frontal.head.out.weight.shape[0] == 2


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--manifest", str(MANIFEST), "--out", str(out), "--epochs", "4", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["twoview", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the run ended or timed out before its first checkpoint"
    assert not (out / "report.md").exists()  # it really was stopped early
    # A second plain start must not clobber the run.
    again = twoview(*args)
    assert again.returncode == 2 and "--resume" in again.stderr
    # --resume keeps the run's own settings; other options are refused, not silently ignored.
    mixed = twoview("train", "--resume", str(out), "--epochs", "9")
    assert mixed.returncode == 2 and "drop --epochs" in mixed.stderr
    resumed = twoview("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = {e for e, _ in read_metrics(out / "metrics.csv")["train/loss"]}
    assert epochs == {0, 1, 2, 3}
    assert (out / "report.md").exists() and load(out / "best.safetensors")


def test_ddp_on_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    done = twoview(
        "train", "--manifest", str(MANIFEST), "--out", str(out), "--epochs", "1",
        "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", *TINY,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best model:") == 1  # only rank 0 reports
    assert (out / "report.json").exists() and load(out / "best.safetensors")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[1].__setitem__("frontal", "missing/file.dcm"), "missing/file.dcm"),
        (lambda rows: rows[2].__setitem__("nodule", "yes"), "column 'nodule'"),
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path, edit, message):
    with open(MANIFEST) as f:
        rows = list(csv.DictReader(f))
    edit(rows)
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done = twoview(
        "train", "--manifest", str(bad), "--images", str(SAMPLES), "--out", str(tmp_path / "o"), *TINY
    )
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_too_few_positives_to_validate(tmp_path):
    with open(MANIFEST) as f:
        rows = list(csv.DictReader(f))
    labels = ["pleural_effusion", "nodule", "cardiomegaly", "pneumothorax", "consolidation"]
    for row in rows:
        for name in labels:
            row[name] = "0"
    rows[0]["nodule"] = "1"  # one positive: it cannot be both trained on and validated
    bad = tmp_path / "few.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(TrainError, match="too few positives to validate"):
        fit(settings(tmp_path / "o", manifest=str(bad), images_dir=str(SAMPLES)))


def test_an_architecture_cannot_be_forced_on_a_checkpoint_start(tmp_path):
    first = tmp_path / "first"
    fit(settings(first, epochs=1))
    with pytest.raises(TrainError, match="--arch tiny cannot apply"):
        fit(settings(tmp_path / "second", start=str(first / "best.safetensors")))


def test_a_start_from_imported_weights_takes_their_normalisation(tmp_path):
    from models.config import ModelConfig
    from models.errors import PretrainedError
    from models.importing import import_weights
    from pipeline.start_model import build_start_model
    from tests.models.xrv_standin import TINY, save_release

    weights = tmp_path / "xrv.safetensors"
    import_weights(save_release(tmp_path / "xrv.pt", sizes=TINY), weights, expect=ModelConfig.tiny())
    net = build_start_model(settings(tmp_path / "run", start=str(weights)), ("nodule", "effusion"))
    assert (net.config.norm_mean, net.config.norm_std) == (0.5, 1 / 2048)
    assert net.config.labels == ("nodule", "effusion")
    with pytest.raises(PretrainedError, match="this model needs stem 64"):
        build_start_model(settings(tmp_path / "run", start=str(weights), arch="densenet121"), ("nodule",))
