"""Batch prediction: `Predictor` turns studies into per-head probabilities; `predict_folder` streams a folder to a file.

DataLoader workers decode one study at a time (not a batch each), in order, ahead of the model; this
process gathers them into batches. With the model on the CPU, workers and model take turns at the
cores (`pipeline.parallel.Gate`): the workers decode while the model waits for its next batch. On
CUDA, batches go through pinned memory with asynchronous copies, and the next batch is sent to the
GPU before the last one's results are read back. Each batch's rows are written (and fsynced) as
they come, so memory stays flat and a rerun resumes.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import Dataset

from models.checkpoint import load, read_config
from models.config import ModelConfig
from models.errors import CheckpointError
from models.names import HEADS, ROUTES
from models.twoview import TwoViewNet, ViewLogits, fast_dtype
from pipeline.data import InDtype, StudyDataset, StudySample, ViewBatch, batched, collate, study_loader
from pipeline.deidentify import Deidentifier, scrubbed_logs
from pipeline.errors import TwoviewError
from pipeline.isolate import Runner, direct
from pipeline.manifest import Manifest
from pipeline.outputs import ErrorsFile, PredictionsFile, errors_path, output_format
from pipeline.parallel import Gate, Gated, usable_cores
from pipeline.progress import progress_bar
from pipeline.records import Probabilities, StudyPrediction
from pipeline.shards import Shard, select
from pipeline.sources import gather as gather_sources
from pipeline.studies import ImageSource, ScanResult, SetAside, Study

__all__ = [
    "DEMO_MODEL",
    "BatchSink",
    "BatchValues",
    "PredictSummary",
    "PredictionOutput",
    "Predictor",
    "StudyPrediction",
    "decode_errors",
    "default_batch_size",
    "default_workers",
    "failed_prediction",
    "gather",
    "load_model",
    "model_file",
    "predict_folder",
    "resolve_device",
    "start_summary",
    "study_prediction",
]

logger = logging.getLogger(__name__)

#: The bundled demo model, used when no model is given.
DEMO_MODEL = Path(__file__).resolve().parents[1] / "sample_data" / "models" / "demo.safetensors"
_NO_VIEW = "no view of the study could be read, so it was not predicted"
#: On CUDA, each view's rows are padded to a multiple of this (`TwoViewNet.shape_bucket`; exact in eval mode),
#: so cuDNN meets a few batch shapes rather than one per mix of views.
SHAPE_BUCKET = 8


@dataclass
class PredictSummary:
    """What a `predict_folder` run did: studies predicted by route, skipped, failed, and files set aside."""

    output: Path
    errors_output: Path
    model: Path
    studies: int = 0  # found by the scan or listed in the manifest
    predicted: int = 0  # in this run
    skipped: int = 0  # already in the output from an earlier run
    failed: int = 0  # no view could be read
    routes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROUTES, 0))
    set_aside: int = 0  # files: set aside by the scan plus those that failed to decode
    seconds: float = 0.0
    notice: str | None = None  # the model's synthetic-only sentence

    @property
    def studies_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        routes = ", ".join(f"{n} {route}" for route, n in self.routes.items())
        text = (
            f"predicted {self.predicted} studies ({routes}) in {self.seconds:.1f} s "
            f"({self.studies_per_second:.1f} studies/s) into {self.output}"
        )
        if self.skipped:
            text += f"; {self.skipped} already there skipped"
        if self.failed:
            text += f"; {self.failed} failed (no readable view)"
        if self.set_aside or self.failed:
            text += f"; {self.set_aside} files set aside, see {self.errors_output}"
        if self.notice:
            text += f". {self.notice}"
        return text


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """ "auto" (or None) picks CUDA when torch sees a GPU, else the CPU; "cuda" without a GPU is an error."""
    name = str(device) if device is not None else "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError as err:
        raise TwoviewError(f"unknown device {name!r}; choose one of: auto, cpu, cuda") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise TwoviewError("device cuda was asked for, but torch sees no CUDA GPU; use cpu or auto")
    if chosen.type not in ("cpu", "cuda"):
        raise TwoviewError(f"unsupported device {name!r}; choose one of: auto, cpu, cuda")
    return chosen


#: Studies per model call when none is given. On a GPU every call costs the main thread ~1,300
#: operator launches whatever its size (~10-20 ms), so small batches leave the GPU waiting on that
#: thread; the H200 model ceiling (1,751 studies/s) was measured at 64. On the CPU the model's own
#: time dominates, and a small batch reaches the first results sooner.
DEFAULT_BATCH_SIZE = {"cpu": 8, "cuda": 64}


def default_batch_size(device: str | torch.device = "cpu") -> int:
    """Studies per model call for a model on `device` (see `DEFAULT_BATCH_SIZE`)."""
    return DEFAULT_BATCH_SIZE.get(torch.device(device).type, DEFAULT_BATCH_SIZE["cpu"])


def default_workers(device: str | torch.device = "cpu") -> int:
    """Decoding workers for a model on `device`: with a GPU, one per usable core but the one feeding it;
    on the CPU, one per core, since they decode while the model waits (`Gate`); none on a single core."""
    cores = usable_cores()
    if torch.device(device).type == "cpu":
        return cores if cores > 1 else 0
    return cores - 1


def load_model(path: str | Path | None = None) -> tuple[TwoViewNet, Path]:
    """The model in a `.safetensors` checkpoint, or the bundled demo model when `path` is None."""
    path = model_file(path)
    return load(path), path


def model_file(path: str | Path | None = None) -> Path:
    """The checkpoint file `load_model` reads: `path`, or the bundled demo model when it is None."""
    if path is None:
        if not DEMO_MODEL.is_file():
            raise TwoviewError(
                f"no model given and the demo model is not there yet ({DEMO_MODEL}); pass --model PATH "
                "to a .safetensors checkpoint"
            )
        logger.info(
            "using the bundled demo model %s (synthetic data only; pass --model for yours)", DEMO_MODEL
        )
        path = DEMO_MODEL
    path = Path(path)
    if not path.is_file():
        raise TwoviewError(f"{path}: model file not found")
    return path


@dataclass
class _Loaded:
    """One batch of studies: the decodable ones as a `ViewBatch` (None if none) and every study's decode errors."""

    batch: ViewBatch | None
    indices: list[int]  # dataset index of each study in the batch, in order
    empty: list[bool]  # True where no view of the study could be read
    errors: list[tuple[SetAside, ...]]


class _Studies(Dataset):
    """A `StudyDataset` that also returns which files of each study failed to decode, and why."""

    def __init__(self, studies: Sequence[Study], predictor: Predictor, runner: Runner = direct) -> None:
        self.base = StudyDataset(studies, config=predictor.config, train=False, runner=runner)
        self.samples = InDtype(self.base, predictor.batch_dtype)  # cast here, in the worker

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[int, StudySample, tuple[SetAside, ...]]:
        sample = self.samples[index]
        return index, sample, decode_errors(self.base.studies[index], self.base.failed)


def decode_errors(study: Study, failed: dict[Path, str]) -> tuple[SetAside, ...]:
    """The study's files that failed to decode (`StudyDataset.failed`), as errors-file entries."""
    return tuple(
        SetAside(s.path, f"cannot be decoded: {failed[s.path]}", study.study_id, "unreadable")
        for s in study.sources
        if s.path in failed
    )


def _collate(items: Sequence[tuple[int, StudySample, tuple[SetAside, ...]]], *, pin: bool = False) -> _Loaded:
    kept = [sample for _, sample, _ in items if not sample.is_empty]
    return _Loaded(
        batch=collate(kept, pin=pin) if kept else None,
        indices=[index for index, _, _ in items],
        empty=[sample.is_empty for _, sample, _ in items],
        errors=[errors for _, _, errors in items],
    )


@dataclass
class _Running:
    """A batch the model has been given: its sigmoid outputs, still on the device (on CUDA maybe not done)."""

    heads: torch.Tensor  # [5, B, K]: frontal, lateral, joint, final (all float32), route as float
    rows: int


class Predictor:
    """A model ready for inference on one device (fast path unless `fast=False`): batches and studies in, probabilities out."""

    def __init__(
        self,
        model: TwoViewNet | Path,
        device: str | torch.device | None = None,
        fast: bool = True,
        *,
        copy_model: bool = True,
    ) -> None:
        """Works on its own copy of `model` (the caller's network keeps its device and precision), or with
        `copy_model=False` on `model` itself, which it moves and switches to the fast path.

        A checkpoint's path gives its config at once (from the header) and is checked and loaded when the
        model is first needed: `iter_predictions` starts its decoding workers first, so the first batch
        is decoded while that happens. A bad checkpoint is then refused at the first batch.
        """
        self.device = resolve_device(device)
        self.fast = fast
        #: The dtype of the images `batches` makes. On the fast path the model computes in its autocast
        #: dtype, whose first step casts the images to it; cast in the workers instead, they cross to
        #: this process, are stacked and copied to the device at half the bytes, for the same logits.
        self.batch_dtype = (fast_dtype(self.device) if fast else None) or torch.float32
        self._model: TwoViewNet | None = None
        self._checkpoint: Path | None = None
        if isinstance(model, TwoViewNet):
            self._model = self._prepare(copy.deepcopy(model) if copy_model else model)
            self.config = model.config
        else:
            self._checkpoint = Path(model)
            self.config = read_config(self._checkpoint)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # autotuning pays off now that batch shapes repeat
        self.labels = self.config.labels
        self.thresholds = dict(self.config.thresholds)

    @property
    def model(self) -> TwoViewNet:
        """The network on `device`, on the fast path unless `fast=False` (a checkpoint is read now, once)."""
        if self._model is None:
            model = load(self._checkpoint)
            if model.config != self.config:  # the batches were preprocessed by the header's config
                raise CheckpointError(f"{self._checkpoint}: the checkpoint changed while it was in use")
            self._model = self._prepare(model)
        return self._model

    def _prepare(self, model: TwoViewNet) -> TwoViewNet:
        own = model.to(self.device).eval()
        own = own.fast() if self.fast else own.plain()
        own.shape_bucket = SHAPE_BUCKET if self.device.type == "cuda" else None
        return own

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | None = None, device: str | torch.device | None = None, fast: bool = True
    ) -> Predictor:
        """A Predictor for a checkpoint (the demo model when `path` is None), loaded when first needed."""
        return cls(model_file(path), device=device, fast=fast)

    def predict_batch(self, batch: ViewBatch) -> ViewLogits:
        """Probabilities (float32, on the CPU, NaN where a head did not run) for one `ViewBatch`."""
        return self._finish(self._launch(batch))

    def _launch(self, batch: ViewBatch) -> _Running:
        """Send a batch to the device and queue the model on it (on CUDA: returns before the GPU is done)."""
        with torch.inference_mode():
            if self.device.type == "cuda":
                batch = batch.pin_memory()  # so the copy below is asynchronous (no copy if pinned already)
            # The masks stay on the CPU: the model picks each view's rows there, without waiting for the GPU.
            masks = batch.has_frontal, batch.has_lateral
            batch = batch.to(self.device, non_blocking=True)
            out = self.model(batch.frontal, batch.lateral, *masks).sigmoid()
            heads = [getattr(out, name).float() for name in (*HEADS, "final")]
            heads.append(out.route.float()[:, None].expand_as(heads[0]))
            return _Running(torch.stack(heads), len(batch))

    @staticmethod
    def _finish(running: _Running) -> ViewLogits:
        """Wait for a launched batch and bring its outputs to the CPU in one copy."""
        with torch.inference_mode():
            heads = running.heads.cpu()
        return ViewLogits(*heads[:4], route=heads[4, :, 0].long())

    def predict_studies(
        self,
        studies: Sequence[Study],
        *,
        batch_size: int | None = None,
        workers: int = 0,
        runner: Runner = direct,
    ) -> list[StudyPrediction]:
        """Every study's prediction, in order; a study none of whose views decodes comes back with route None."""
        chunks = self.iter_predictions(studies, batch_size=batch_size, workers=workers, runner=runner)
        return [p for chunk in chunks for p in chunk]

    def iter_predictions(
        self,
        studies: Sequence[Study],
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        runner: Runner = direct,
    ) -> Iterator[list[StudyPrediction]]:
        """One list of predictions per batch, in study order; `workers` processes decode ahead (None: default).

        `runner` decodes each file (`pipeline.isolate.Isolated`: in a killable child process).
        """
        batch_size, workers = _check_settings(batch_size, workers, self.device)
        if not studies:
            return iter(())
        return self._stream(studies, batch_size, workers, runner)

    def gate(self, workers: int, *, passing: int = 0) -> Gate:
        """What keeps `workers` decoding processes off the cores while this model runs (on the CPU only);
        items below `passing` never wait (see `Gate`)."""
        return Gate(active=workers > 0 and self.device.type == "cpu", passing=passing)

    def batches(
        self,
        studies: Sequence[Study],
        *,
        batch_size: int,
        workers: int,
        runner: Runner = direct,
        gate: Gate | None = None,
    ) -> Iterator[_Loaded]:
        """The batches the model gets, decoded one study per worker task and batched here, in order
        (what `iter_predictions` runs the model on; alone, it times the data path). Workers start each
        study only while `gate` is open."""
        gate = gate or Gate(active=False)
        loader = study_loader(
            Gated(_Studies(studies, self, runner), gate),
            batch_size=batch_size,
            workers=workers,
            multiprocessing_context=gate.context if workers else None,
        )
        decoding = iter(loader)  # the workers start now, not at the caller's first `next`
        pin = self.device.type == "cuda"  # stacked straight into pinned memory: `_launch` copies no more
        return (_collate(items, pin=pin) for items in batched(decoding, batch_size))

    def _stream(
        self, studies: Sequence[Study], batch_size: int, workers: int, runner: Runner
    ) -> Iterator[list[StudyPrediction]]:
        """Batches from `batches`; on CUDA one batch runs on the GPU while the next is made."""
        ahead = 1 if self.device.type == "cuda" else 0
        running: list[tuple[_Loaded, _Running | None]] = []
        gate = self.gate(workers, passing=batch_size)
        loading = self.batches(studies, batch_size=batch_size, workers=workers, runner=runner, gate=gate)
        with gate.closed():  # on the CPU, only the first batch competes with the load
            _ = self.model  # a checkpoint not read yet is read now, while the workers decode the first batch
        for loaded in loading:
            with gate.closed():
                launched = self._launch(loaded.batch) if loaded.batch is not None else None
            running.append((loaded, launched))
            if len(running) > ahead:
                yield self._predictions(studies, *running.pop(0))
        while running:
            yield self._predictions(studies, *running.pop(0))

    def _predictions(
        self, studies: Sequence[Study], loaded: _Loaded, running: _Running | None
    ) -> list[StudyPrediction]:
        values = BatchValues.of(self._finish(running)) if running is not None else None
        out, row = [], 0
        for index, empty, errors in zip(loaded.indices, loaded.empty, loaded.errors, strict=True):
            study = studies[index]
            if empty:
                out.append(failed_prediction(study, errors, self.labels))
            else:
                out.append(study_prediction(study, values, row, errors, self.labels, self.thresholds))
                row += 1
        return out


@dataclass(frozen=True)
class BatchValues:
    """A batch's probabilities as Python numbers, read off the tensors once per batch.

    Per-row tensor reads cost ~10 us each: on a GPU, where the main thread has about a millisecond
    per study for everything, reading four heads and a route per study was a large share of it.
    """

    heads: dict[str, list[list[float]]]  # head -> rows -> one value per label (NaN: the head did not run)
    routes: list[str]

    @classmethod
    def of(cls, probs: ViewLogits) -> BatchValues:
        names = (*HEADS, "final")
        rows = torch.stack([getattr(probs, name).float() for name in names]).tolist()
        return cls(dict(zip(names, rows, strict=True)), probs.routes)


def study_prediction(
    study: Study,
    values: BatchValues,
    row: int,
    errors: Sequence[SetAside],
    labels: Sequence[str],
    thresholds: dict[str, float],
) -> StudyPrediction:
    """Row `row` of a batch's probabilities as the study's prediction, with the calls against `thresholds`."""
    failed = {e.path for e in errors}
    heads = {name: _values(rows[row], labels) for name, rows in values.heads.items()}
    calls = {
        label: int(heads["final"][label] >= threshold)
        for label, threshold in thresholds.items()
        if heads["final"][label] is not None
    }
    return StudyPrediction(
        study_id=study.study_id,
        route=values.routes[row],
        calls=calls,
        frontal_file=_used(study.frontal, failed),
        lateral_file=_used(study.lateral, failed),
        errors=tuple(errors),
        **heads,
    )


def failed_prediction(study: Study, errors: Sequence[SetAside], labels: Sequence[str]) -> StudyPrediction:
    """A study none of whose views could be read: no route, blank probabilities, the reasons."""
    blank = dict.fromkeys(labels)
    errors = tuple(replace(e, reason=f"{e.reason}; {_NO_VIEW}") for e in errors)
    return StudyPrediction(
        study.study_id, None, blank, dict(blank), dict(blank), dict(blank), {}, None, None, errors
    )


def _values(row: list[float], labels: Sequence[str]) -> Probabilities:
    return {label: (None if v != v else v) for label, v in zip(labels, row, strict=True)}


def _check_settings(batch_size: int | None, workers: int | None, device: torch.device) -> tuple[int, int]:
    """Refuse a batch size below 1 or negative workers; returns both (None: the default for a model
    on `device`)."""
    batch_size = default_batch_size(device) if batch_size is None else batch_size
    if batch_size < 1:
        raise TwoviewError(f"batch size must be at least 1, got {batch_size}")
    workers = default_workers(device) if workers is None else workers
    if workers < 0:
        raise TwoviewError(f"workers must be 0 or more, got {workers}")
    return batch_size, workers


def _used(source: ImageSource | None, failed: set[Path]) -> Path | None:
    return source.path if source is not None and source.path not in failed else None


class BatchSink(Protocol):
    """Gets each batch's predictions (real ids and paths) before their rows are written, e.g. `DicomResults`."""

    def write(self, predictions: Sequence[StudyPrediction]) -> None: ...


class PredictionOutput:
    """An open prediction output: the predictions and errors files (resumed), a sink, and the run's summary.

    Every engine writes through it a batch at a time: the sink first, then the batch's errors, then its
    rows, so a study in the output has its errors and its sink's files. `relative_to` writes file paths
    relative to that folder (for files fetched into a working folder). A run that fails removes the
    files it created and wrote no row to: a header-only file would tie a rerun to this model's labels.
    """

    def __init__(
        self,
        out_path: str | Path,
        predictor: Predictor | PredictorInfo,
        summary: PredictSummary,
        *,
        deidentify: Deidentifier | None = None,
        sink: BatchSink | None = None,
        relative_to: Path | None = None,
    ) -> None:
        self.summary = summary
        self.deidentify = deidentify
        self.sink = sink
        self.relative_to = relative_to
        self._created = [p for p in (Path(out_path), summary.errors_output) if not p.exists()]
        self.predictions = PredictionsFile(out_path, predictor.labels, predictor.thresholds)
        try:
            self.errors = ErrorsFile(summary.errors_output)
        except BaseException:
            self.predictions.close()
            raise

    def key(self, study_id: str) -> str:
        """A study's id as the output writes it (its pseudonym when de-identifying)."""
        return self.deidentify.study_id(study_id) if self.deidentify is not None else study_id

    def todo(self, studies: Sequence[Study]) -> list[Study]:
        """The studies not yet in the output; the others count as skipped."""
        todo = [s for s in studies if self.key(s.study_id) not in self.predictions.done]
        self.summary.skipped += len(studies) - len(todo)
        return todo

    def set_aside(self, items: Sequence[SetAside]) -> None:
        """Files a scan set aside (each listed once in the errors file)."""
        self.errors.write(self._set_aside(item) for item in items)
        self.summary.set_aside += len(items)

    def write(self, chunk: Sequence[StudyPrediction]) -> None:
        """One batch: the sink, then the errors of its studies, then the rows of those predicted."""
        if self.sink is not None:
            self.sink.write(chunk)
        chunk = [self._prediction(p) for p in chunk]
        problems = [e for p in chunk for e in p.errors]
        self.errors.write(problems)
        done = [p for p in chunk if p.ok]
        self.predictions.write(done)
        self.summary.set_aside += len(problems)
        self.summary.failed += len(chunk) - len(done)
        self.summary.predicted += len(done)
        for p in done:
            self.summary.routes[p.route] += 1

    def _prediction(self, prediction: StudyPrediction) -> StudyPrediction:
        if self.deidentify is not None:
            return self.deidentify.prediction(prediction)
        if self.relative_to is None:
            return prediction
        return replace(
            prediction,
            frontal_file=self._relative(prediction.frontal_file),
            lateral_file=self._relative(prediction.lateral_file),
            errors=tuple(map(self._set_aside, prediction.errors)),
        )

    def _set_aside(self, item: SetAside) -> SetAside:
        if self.deidentify is not None:
            return self.deidentify.set_aside(item)
        if self.relative_to is None:
            return item
        reason = item.reason.replace(f"{self.relative_to}/", "")
        return replace(item, path=self._relative(item.path), reason=reason)

    def _relative(self, path: Path | None) -> Path | None:
        if path is None or self.relative_to is None or not path.is_relative_to(self.relative_to):
            return path
        return path.relative_to(self.relative_to)

    def close(self) -> None:
        self.predictions.close()
        self.errors.close()

    def __enter__(self) -> PredictionOutput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close()
        if exc_type is not None:
            unused = {
                self.predictions.path: not self.predictions.done,
                self.errors.path: not self.errors.written,
            }
            for path in self._created:
                if unused.get(path):
                    path.unlink(missing_ok=True)


def predict_folder(
    source: str | Path | Manifest | ScanResult,
    out_path: str | Path = "predictions.csv",
    model_path: str | Path | None = None,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    workers: int | None = None,
    fast: bool = True,
    predictor: Predictor | None = None,
    shard: Shard | None = None,
    deidentify: Deidentifier | None = None,
    sink: BatchSink | None = None,
    runner: Runner = direct,
) -> PredictSummary:
    """Predict every study of a folder (scanned recursively), a manifest or a scan into `out_path` (.csv/.jsonl).

    Studies already in `out_path` are skipped; files set aside go to `<stem>.errors.csv`. A ready
    `predictor` replaces `model_path`, `device` and `fast`; a `shard` keeps only its share of studies;
    `deidentify` writes pseudonyms for study ids and paths, in the outputs and in the logs; a `sink`
    gets every batch's predictions before their rows are written (the DICOM results); `runner` reads
    and decodes each file (`pipeline.isolate.Isolated`: in a killable child process).
    """
    if deidentify is not None and isinstance(source, (str, Path)):
        deidentify = deidentify.under(source)
    with scrubbed_logs(deidentify):
        start = time.perf_counter()
        output_format(out_path)
        if predictor is None:
            model_path = model_file(model_path)
            predictor = Predictor(model_path, device=device, fast=fast)
        batch_size, workers = _check_settings(batch_size, workers, predictor.device)
        studies, set_aside = gather(source, out_path, shard, runner)
        summary = start_summary(out_path, model_path, predictor.config, len(studies))
        if deidentify is not None:
            deidentify.learn(studies, set_aside)
        with PredictionOutput(out_path, predictor, summary, deidentify=deidentify, sink=sink) as output:
            output.set_aside(set_aside)
            todo = output.todo(studies)
            _log_skipped(summary, out_path)
            with progress_bar(len(todo), "studies") as progress:
                chunks = predictor.iter_predictions(
                    todo, batch_size=batch_size, workers=workers, runner=runner
                )
                for chunk in chunks:
                    output.write(chunk)
                    progress.update(len(chunk))
        summary.seconds = time.perf_counter() - start
        logger.info("%s", summary)
        return summary


class PredictorInfo(Protocol):
    """What the output files need of a model: its labels and thresholds."""

    labels: Sequence[str]
    thresholds: dict[str, float]


def start_summary(
    out_path: str | Path, model_path: str | Path | None, config: ModelConfig, studies: int
) -> PredictSummary:
    """A fresh summary for `studies` studies, with the model's notice (logged once as a warning)."""
    out_path = Path(out_path)
    summary = PredictSummary(out_path, errors_path(out_path), Path(model_path or "(given predictor)"))
    summary.studies = studies
    summary.notice = config.notice
    if summary.notice:
        logger.warning("%s", summary.notice)
    return summary


def _log_skipped(summary: PredictSummary, out_path: Path | str) -> None:
    if summary.skipped:
        logger.info(
            "%d of %d studies are already in %s; predicting the other %d",
            summary.skipped,
            summary.studies,
            out_path,
            summary.studies - summary.skipped,
        )


def gather(
    source: str | Path | Manifest | ScanResult,
    out_path: str | Path,
    shard: Shard | None = None,
    runner: Runner = direct,
) -> tuple[tuple[Study, ...], tuple[SetAside, ...]]:
    """The studies to predict (this shard's) and the files set aside; checks the output's suffix first."""
    output_format(out_path)
    studies, set_aside = gather_sources(source, runner)
    if shard is not None:
        studies, set_aside = select(studies, set_aside, shard)
        logger.info("shard %s: %d studies", shard, len(studies))
    return studies, set_aside
