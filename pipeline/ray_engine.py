"""`twoview predict FOLDER --engine ray`: the same prediction on a Ray cluster with Ray Data.

The driver scans the folder (headers only), skips the studies already in the output and writes every
row and error through the same `PredictionOutput` as the local path. Ray Data decodes the studies in
CPU tasks (`map`) and runs the model in a pool of actors (`map_batches`, one GPU each where the cluster
has GPUs), in study order. The images must be where every node reads them (a shared file system).
Ray is an optional extra, imported only here and only when used: `pip install "twoview[ray]"`.
"""

from __future__ import annotations

import logging
import math
import pickle
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import load, read_config
from models.config import ModelConfig
from models.twoview import ViewLogits
from pipeline.data import StudyDataset, ViewBatch
from pipeline.deidentify import Deidentifier, scrubbed_logs
from pipeline.errors import TwoviewError
from pipeline.manifest import Manifest
from pipeline.predict import (
    DEMO_MODEL,
    BatchSink,
    BatchValues,
    PredictionOutput,
    Predictor,
    PredictSummary,
    decode_errors,
    default_batch_size,
    failed_prediction,
    gather,
    start_summary,
    study_prediction,
)
from pipeline.progress import progress_bar
from pipeline.shards import Shard
from pipeline.studies import ScanResult, Study

__all__ = ["RayEngineError", "predict_folder_ray"]

logger = logging.getLogger(__name__)

#: Studies per Ray Data block: small enough to spread decoding, big enough to keep overheads low.
_BLOCK = 32
#: Memory each decoding task reserves: its worker (torch, MONAI) and a 3000 x 3000 film with its float copies.
_DECODE_MEMORY = 512 * 1024**2


class RayEngineError(TwoviewError):
    """The Ray engine cannot run: Ray missing, no cluster at the address, or bad settings."""


@dataclass(frozen=True)
class _Labels:
    """What the output files need of the model (the driver never loads the weights)."""

    labels: tuple[str, ...]
    thresholds: dict[str, float]


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 (the extra brings Ray Data)
    except ImportError as err:
        raise RayEngineError(
            'the Ray engine needs Ray Data, which is not installed: pip install "twoview[ray]"'
        ) from err
    return ray


def predict_folder_ray(
    source: str | Path | Manifest | ScanResult,
    out_path: str | Path = "predictions.csv",
    model_path: str | Path | None = None,
    *,
    address: str | None = None,
    actors: int | None = None,
    actor_cpus: float = 1.0,
    device: str = "auto",
    batch_size: int | None = None,
    fast: bool = True,
    shard: Shard | None = None,
    deidentify: Deidentifier | None = None,
    sink: BatchSink | None = None,
) -> PredictSummary:
    """`predict_folder` on Ray: same output format, resume, errors file and sink.

    Connects to the cluster at `address` ("auto": the one this machine belongs to; None: a running
    `ray.init()` or a new local instance). `actors` model copies (default: one per GPU, else one).
    """
    ray = _ray()
    if (batch_size is not None and batch_size < 1) or actor_cpus <= 0 or (actors is not None and actors < 1):
        raise RayEngineError("--batch-size and --ray-actors must be at least 1 and --ray-actor-cpus above 0")
    if device not in ("auto", "cpu", "cuda"):
        raise RayEngineError(f"unknown device {device!r}; choose one of: auto, cpu, cuda")
    model_path = Path(model_path) if model_path is not None else DEMO_MODEL
    if not model_path.is_file():
        raise TwoviewError(f"{model_path}: model file not found")
    config = read_config(model_path)
    if deidentify is not None and isinstance(source, (str, Path)):
        deidentify = deidentify.under(source)
    with scrubbed_logs(deidentify):
        start = time.perf_counter()
        studies, set_aside = gather(source, out_path, shard)
        summary = start_summary(out_path, model_path, config, len(studies))
        if deidentify is not None:
            deidentify.learn(studies, set_aside)
        info = _Labels(config.labels, dict(config.thresholds))
        with PredictionOutput(out_path, info, summary, deidentify=deidentify, sink=sink) as output:
            output.set_aside(set_aside)
            todo = output.todo(studies)
            if todo:
                started = _connect(ray, address)
                try:
                    _run(ray, todo, output, model_path, config, actors, actor_cpus, device, batch_size, fast)
                finally:
                    if started:
                        ray.shutdown()
        summary.seconds = time.perf_counter() - start
        logger.info("%s", summary)
        return summary


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster (or start a local instance); True when this call started Ray."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise RayEngineError(
            f"cannot join the Ray cluster at {address or 'a new local instance'}: {err}"
        ) from err
    return True


def _run(
    ray: Any,
    todo: Sequence[Study],
    output: PredictionOutput,
    model_path: Path,
    config: ModelConfig,
    actors: int | None,
    actor_cpus: float,
    device: str,
    batch_size: int | None,
    fast: bool,
) -> None:
    gpus = ray.cluster_resources().get("GPU", 0) if device != "cpu" else 0
    if device == "cuda" and not gpus:
        raise RayEngineError("device cuda was asked for, but the Ray cluster has no GPU; use cpu or auto")
    batch_size = batch_size or default_batch_size("cuda" if gpus else "cpu")
    actors = actors or max(1, int(gpus))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in study order, as the local path writes them
    context.enable_progress_bars = False
    items = [{"index": i, "study": pickle.dumps(study)} for i, study in enumerate(todo)]
    data = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / _BLOCK)))
    # Decoding runs in CPU tasks of its own, each reserving the memory a big film needs; that reservation
    # also keeps Ray Data from fusing the tasks into the model actors, where they would run one at a time.
    data = data.map(_decode, fn_kwargs={"config": config.to_json()}, num_cpus=1, memory=_DECODE_MEMORY)
    weights = ray.put(model_path.read_bytes())  # once in the object store: the file need not be on every node
    data = data.map_batches(
        _Model,
        fn_constructor_kwargs={"checkpoint": [weights], "device": device, "fast": fast},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        num_gpus=1 if gpus else 0,
    )
    logger.info("Ray: %d studies, %d model actor(s)%s", len(todo), actors, " on GPUs" if gpus else "")
    labels, thresholds = config.labels, dict(config.thresholds)
    with progress_bar(len(todo), "studies") as progress:
        for batch in data.iter_batches(batch_size=batch_size, batch_format="numpy"):
            chunk = _predictions(batch, todo, labels, thresholds)
            output.write(chunk)
            progress.update(len(chunk))


def _predictions(batch: dict[str, np.ndarray], todo: Sequence[Study], labels, thresholds) -> list:
    """One batch of the actors' output as `StudyPrediction`s (a study with no readable view: failed)."""
    failed = batch["route"] < 0
    heads = {name: torch.from_numpy(np.array(batch[name], dtype=np.float32)) for name in _OUTPUTS}
    route = torch.from_numpy(np.where(failed, 0, batch["route"]))  # a failed row has no route to name
    values = BatchValues.of(ViewLogits(*(heads[name] for name in _OUTPUTS), route=route))
    out = []
    for row, index in enumerate(batch["index"].tolist()):
        study, errors = todo[index], pickle.loads(batch["errors"][row])
        if failed[row]:
            out.append(failed_prediction(study, errors, labels))
        else:
            out.append(study_prediction(study, values, row, errors, labels, thresholds))
    return out


_OUTPUTS = ("frontal", "lateral", "joint", "final")  # ViewLogits' field order
_DECODERS: dict[str, StudyDataset] = {}  # per worker process: one preprocessing pipeline per config


def _decode(row: dict[str, Any], config: str) -> dict[str, Any]:
    """A Ray task: one study's views decoded and preprocessed (zeros and a False flag where missing)."""
    if config not in _DECODERS:
        logging.getLogger("pipeline").setLevel(
            logging.ERROR
        )  # failures travel in the rows to the errors file
        _DECODERS[config] = StudyDataset((), config=ModelConfig.from_json(config), train=False)
    dataset = _DECODERS[config]
    dataset.failed.clear()
    study: Study = pickle.loads(row["study"])
    sample = dataset.decode(study)
    size = dataset.config.image_size
    blank = np.zeros((1, size, size), dtype=np.float32)
    return {
        "index": row["index"],
        "frontal": blank if sample.frontal is None else _array(sample.frontal),
        "lateral": blank if sample.lateral is None else _array(sample.lateral),
        "has_frontal": sample.frontal is not None,
        "has_lateral": sample.lateral is not None,
        "errors": pickle.dumps(decode_errors(study, dataset.failed)),
    }


def _array(image: torch.Tensor) -> np.ndarray:
    return torch.as_tensor(image).detach().to(torch.float32).numpy().copy()


class _Model:
    """A Ray actor holding the model: a batch of decoded studies in, every head's probabilities out."""

    def __init__(self, checkpoint: list[Any], device: str, fast: bool) -> None:
        """`checkpoint`: [the object reference of the checkpoint's bytes] (in a list, so Ray passes the reference)."""
        import ray

        with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
            f.write(ray.get(checkpoint[0]))
            f.flush()
            model = load(f.name)
        self.predictor = Predictor(model, device=device, fast=fast)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        has_frontal = torch.from_numpy(batch["has_frontal"].astype(bool))
        has_lateral = torch.from_numpy(batch["has_lateral"].astype(bool))
        keep = has_frontal | has_lateral
        rows, k = len(keep), len(self.predictor.labels)
        out = {name: np.full((rows, k), np.nan, dtype=np.float32) for name in _OUTPUTS}
        route = np.full(rows, -1, dtype=np.int64)
        if keep.any():
            views = ViewBatch(
                torch.from_numpy(np.ascontiguousarray(batch["frontal"][keep.numpy()])),
                torch.from_numpy(np.ascontiguousarray(batch["lateral"][keep.numpy()])),
                has_frontal[keep],
                has_lateral[keep],
                torch.full((int(keep.sum()), k), float("nan")),
                [""] * int(keep.sum()),
            )
            probs = self.predictor.predict_batch(views)
            for name in _OUTPUTS:
                out[name][keep.numpy()] = getattr(probs, name).numpy()
            route[keep.numpy()] = probs.route.numpy()
        return {"index": batch["index"], "errors": batch["errors"], "route": route, **out}
