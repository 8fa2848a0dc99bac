"""Batch prediction: `Predictor` turns studies into per-head probabilities; `predict_folder` streams a folder to a file.

DataLoader workers decode one study at a time (not a batch each), in order, ahead of the model; this
process gathers them into batches. On CUDA, batches go through pinned memory with asynchronous
copies, and the next batch is sent to the GPU before the last one's results are read back. Each
batch's rows are written (and fsynced) as they come, so memory stays flat and a rerun resumes.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from models.checkpoint import load
from models.names import HEADS, ROUTES
from models.twoview import TwoViewNet, ViewLogits
from pipeline.data import StudyDataset, StudySample, ViewBatch, collate, worker_init
from pipeline.deidentify import Deidentifier, scrubbed_logs
from pipeline.errors import TwoviewError
from pipeline.isolate import Runner, direct
from pipeline.manifest import Manifest
from pipeline.outputs import ErrorsFile, PredictionsFile, errors_path, output_format
from pipeline.parallel import usable_cores
from pipeline.progress import progress_bar
from pipeline.records import Probabilities, StudyPrediction
from pipeline.shards import Shard, select
from pipeline.sources import gather
from pipeline.studies import ImageSource, ScanResult, SetAside, Study

__all__ = [
    "DEMO_MODEL",
    "PredictSummary",
    "Predictor",
    "StudyPrediction",
    "default_workers",
    "load_model",
    "predict_folder",
    "resolve_device",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

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


def default_workers() -> int:
    """Decoding workers: one per usable core but the one this process feeds the model from (0 on one core)."""
    return usable_cores() - 1


def load_model(path: str | Path | None = None) -> tuple[TwoViewNet, Path]:
    """The model in a `.safetensors` checkpoint, or the bundled demo model when `path` is None."""
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
    return load(path), path


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

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[int, StudySample, tuple[SetAside, ...]]:
        sample = self.base[index]
        study = self.base.studies[index]
        failed = self.base.failed
        errors = tuple(
            SetAside(s.path, f"cannot be decoded: {failed[s.path]}", study.study_id, "unreadable")
            for s in study.sources
            if s.path in failed
        )
        return index, sample, errors


def _collate(items: Sequence[tuple[int, StudySample, tuple[SetAside, ...]]]) -> _Loaded:
    kept = [sample for _, sample, _ in items if not sample.is_empty]
    return _Loaded(
        batch=collate(kept) if kept else None,
        indices=[index for index, _, _ in items],
        empty=[sample.is_empty for _, sample, _ in items],
        errors=[errors for _, _, errors in items],
    )


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prefetch_factor(batch_size: int, workers: int) -> int:
    """Studies each worker decodes ahead: together, two batches, so the model never waits for a whole one."""
    return max(2, math.ceil(2 * batch_size / workers))


@dataclass
class _Running:
    """A batch the model has been given: its sigmoid outputs, still on the device (on CUDA maybe not done)."""

    heads: torch.Tensor  # [5, B, K]: frontal, lateral, joint, final (all float32), route as float
    rows: int


class Predictor:
    """A model ready for inference on one device (fast path unless `fast=False`): batches and studies in, probabilities out."""

    def __init__(
        self,
        model: TwoViewNet,
        device: str | torch.device | None = None,
        fast: bool = True,
        *,
        copy_model: bool = True,
    ) -> None:
        """Works on its own copy of `model` (the caller's network keeps its device and precision), or with
        `copy_model=False` on `model` itself, which it moves and switches to the fast path."""
        self.device = resolve_device(device)
        own = (copy.deepcopy(model) if copy_model else model).to(self.device).eval()
        self.model = own.fast() if fast else own.plain()
        self.model.shape_bucket = SHAPE_BUCKET if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # autotuning pays off now that batch shapes repeat
        self.config = model.config
        self.labels = model.config.labels
        self.thresholds = dict(model.config.thresholds)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | None = None, device: str | torch.device | None = None, fast: bool = True
    ) -> Predictor:
        """Load a checkpoint (the demo model when `path` is None) into a Predictor."""
        model, _ = load_model(path)
        return cls(model, device=device, fast=fast, copy_model=False)

    def predict_batch(self, batch: ViewBatch) -> ViewLogits:
        """Probabilities (float32, on the CPU, NaN where a head did not run) for one `ViewBatch`."""
        return self._finish(self._launch(batch))

    def _launch(self, batch: ViewBatch) -> _Running:
        """Send a batch to the device and queue the model on it (on CUDA: returns before the GPU is done)."""
        with torch.inference_mode():
            if self.device.type == "cuda":
                batch = batch.pin_memory()  # so the copy below is asynchronous
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
        self, studies: Sequence[Study], *, batch_size: int = 8, workers: int = 0, runner: Runner = direct
    ) -> list[StudyPrediction]:
        """Every study's prediction, in order; a study none of whose views decodes comes back with route None."""
        chunks = self.iter_predictions(studies, batch_size=batch_size, workers=workers, runner=runner)
        return [p for chunk in chunks for p in chunk]

    def iter_predictions(
        self,
        studies: Sequence[Study],
        *,
        batch_size: int = 8,
        workers: int | None = None,
        runner: Runner = direct,
    ) -> Iterator[list[StudyPrediction]]:
        """One list of predictions per batch, in study order; `workers` processes decode ahead (None: default).

        `runner` decodes each file (`pipeline.isolate.Isolated`: in a killable child process).
        """
        workers = _check_settings(batch_size, workers)
        if not studies:
            return iter(())
        return self._stream(studies, batch_size, workers, runner)

    def batches(
        self, studies: Sequence[Study], *, batch_size: int, workers: int, runner: Runner = direct
    ) -> Iterator[_Loaded]:
        """The batches the model gets, decoded one study per worker task and batched here, in order
        (what `iter_predictions` runs the model on; alone, it times the data path)."""
        loader = DataLoader(
            _Studies(studies, self, runner),
            batch_size=None,  # one study per task: no worker sits on a whole batch while others idle
            num_workers=workers,
            prefetch_factor=prefetch_factor(batch_size, workers) if workers else None,
            worker_init_fn=worker_init if workers else None,
        )
        return (_collate(items) for items in _batches(loader, batch_size))

    def _stream(
        self, studies: Sequence[Study], batch_size: int, workers: int, runner: Runner
    ) -> Iterator[list[StudyPrediction]]:
        """Batches from `batches`; on CUDA one batch runs on the GPU while the next is made."""
        ahead = 1 if self.device.type == "cuda" else 0
        running: list[tuple[_Loaded, _Running | None]] = []
        for loaded in self.batches(studies, batch_size=batch_size, workers=workers, runner=runner):
            running.append((loaded, self._launch(loaded.batch) if loaded.batch is not None else None))
            if len(running) > ahead:
                yield self._predictions(studies, *running.pop(0))
        while running:
            yield self._predictions(studies, *running.pop(0))

    def _predictions(
        self, studies: Sequence[Study], loaded: _Loaded, running: _Running | None
    ) -> list[StudyPrediction]:
        probs = self._finish(running) if running is not None else None
        out, row = [], 0
        for index, empty, errors in zip(loaded.indices, loaded.empty, loaded.errors, strict=True):
            study = studies[index]
            if empty:
                out.append(self._failed(study, errors))
            else:
                out.append(self._prediction(study, probs, row, errors))
                row += 1
        return out

    def _prediction(
        self, study: Study, probs: ViewLogits, row: int, errors: tuple[SetAside, ...]
    ) -> StudyPrediction:
        failed = {e.path for e in errors}
        heads = {name: self._values(getattr(probs, name)[row]) for name in (*HEADS, "final")}
        calls = {
            label: int(heads["final"][label] >= threshold)
            for label, threshold in self.thresholds.items()
            if heads["final"][label] is not None
        }
        return StudyPrediction(
            study_id=study.study_id,
            route=probs.routes[row],
            calls=calls,
            frontal_file=_used(study.frontal, failed),
            lateral_file=_used(study.lateral, failed),
            errors=errors,
            **heads,
        )

    def _failed(self, study: Study, errors: tuple[SetAside, ...]) -> StudyPrediction:
        blank = dict.fromkeys(self.labels)
        errors = tuple(replace(e, reason=f"{e.reason}; {_NO_VIEW}") for e in errors)
        return StudyPrediction(
            study.study_id, None, blank, dict(blank), dict(blank), dict(blank), {}, None, None, errors
        )

    def _values(self, row: torch.Tensor) -> Probabilities:
        return {label: (None if v != v else v) for label, v in zip(self.labels, row.tolist(), strict=True)}


def _check_settings(batch_size: int, workers: int | None) -> int:
    """Refuse a batch size below 1 or negative workers; returns the number of workers (None: the default)."""
    if batch_size < 1:
        raise TwoviewError(f"batch size must be at least 1, got {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise TwoviewError(f"workers must be 0 or more, got {workers}")
    return workers


def _used(source: ImageSource | None, failed: set[Path]) -> Path | None:
    return source.path if source is not None and source.path not in failed else None


def predict_folder(
    source: str | Path | Manifest | ScanResult,
    out_path: str | Path = "predictions.csv",
    model_path: str | Path | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = "auto",
    workers: int | None = None,
    fast: bool = True,
    predictor: Predictor | None = None,
    shard: Shard | None = None,
    deidentify: Deidentifier | None = None,
    runner: Runner = direct,
) -> PredictSummary:
    """Predict every study of a folder (scanned recursively), a manifest or a scan into `out_path` (.csv/.jsonl).

    Studies already in `out_path` are skipped; files set aside go to `<stem>.errors.csv`. A ready
    `predictor` replaces `model_path`, `device` and `fast`; a `shard` keeps only its share of studies;
    `deidentify` writes pseudonyms for study ids and paths, in the outputs and in the logs; `runner`
    reads and decodes each file (`pipeline.isolate.Isolated`: in a killable child process).
    """
    if deidentify is not None and isinstance(source, (str, Path)):
        deidentify = deidentify.under(source)
    with scrubbed_logs(deidentify):
        return _predict_folder(
            source,
            out_path,
            model_path,
            batch_size=batch_size,
            device=device,
            workers=workers,
            fast=fast,
            predictor=predictor,
            shard=shard,
            deidentify=deidentify,
            runner=runner,
        )


def _predict_folder(
    source: str | Path | Manifest | ScanResult,
    out_path: str | Path,
    model_path: str | Path | None,
    *,
    batch_size: int,
    device: str | torch.device | None,
    workers: int | None,
    fast: bool,
    predictor: Predictor | None,
    shard: Shard | None,
    deidentify: Deidentifier | None,
    runner: Runner,
) -> PredictSummary:
    """`predict_folder`'s work, inside its log scrubbing."""
    start = time.perf_counter()
    out_path = Path(out_path)
    output_format(out_path)
    if predictor is None:
        model, model_path = load_model(model_path)
        predictor = Predictor(model, device=device, fast=fast, copy_model=False)
    studies, set_aside = gather(source, runner)
    if shard is not None:
        studies, set_aside = select(studies, set_aside, shard)
        logger.info("shard %s: %d studies", shard, len(studies))
    workers = _check_settings(batch_size, workers)
    summary = PredictSummary(out_path, errors_path(out_path), Path(model_path or "(given predictor)"))
    summary.studies = len(studies)
    summary.notice = predictor.config.notice
    if summary.notice:
        logger.warning("%s", summary.notice)
    key = str
    if deidentify is not None:
        deidentify.learn(studies, set_aside)
        key = deidentify.study_id
    with (
        PredictionsFile(out_path, predictor.labels, predictor.thresholds) as predictions,
        ErrorsFile(summary.errors_output) as errors,
    ):
        errors.write(set_aside if deidentify is None else map(deidentify.set_aside, set_aside))
        summary.set_aside = len(set_aside)
        todo = [s for s in studies if key(s.study_id) not in predictions.done]
        summary.skipped = len(studies) - len(todo)
        if summary.skipped:
            logger.info(
                "%d of %d studies are already in %s; predicting the other %d",
                summary.skipped,
                len(studies),
                out_path,
                len(todo),
            )
        _run(
            predictor,
            todo,
            predictions,
            errors,
            summary,
            batch_size=batch_size,
            workers=workers,
            deidentify=deidentify,
            runner=runner,
        )
    summary.seconds = time.perf_counter() - start
    logger.info("%s", summary)
    return summary


def _run(
    predictor: Predictor,
    studies: Sequence[Study],
    predictions: PredictionsFile,
    errors: ErrorsFile,
    summary: PredictSummary,
    *,
    batch_size: int,
    workers: int | None,
    deidentify: Deidentifier | None = None,
    runner: Runner = direct,
) -> None:
    """Predict and write batch by batch: the errors of a batch first, then its rows."""
    with progress_bar(len(studies), "studies") as progress:
        chunks = predictor.iter_predictions(studies, batch_size=batch_size, workers=workers, runner=runner)
        for chunk in chunks:
            if deidentify is not None:
                chunk = [deidentify.prediction(p) for p in chunk]
            problems = [e for p in chunk for e in p.errors]
            errors.write(problems)
            done = [p for p in chunk if p.ok]
            predictions.write(done)
            summary.set_aside += len(problems)
            summary.failed += len(chunk) - len(done)
            summary.predicted += len(done)
            for p in done:
                summary.routes[p.route] += 1
            progress.update(len(chunk))
