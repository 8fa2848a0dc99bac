"""`twoview evaluate`: AUROC per label, head and route on a labelled manifest, with bootstrap intervals.

Writes `report.md`, `report.json` and `roc_curves.png`. The report's two-view section compares the
frontal head alone with the joint head on the same studies: how much the lateral view adds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from models.atomic import write_atomic
from models.names import OUTPUTS
from models.twoview import TwoViewNet
from pipeline.data import InDtype, StudyDataset, batched, collate, study_loader
from pipeline.errors import TwoviewError
from pipeline.manifest import read_manifest
from pipeline.metrics import EvaluationReport, evaluation_report
from pipeline.parallel import Gated
from pipeline.plots import plot_roc_curves
from pipeline.predict import Predictor, default_workers, load_model
from pipeline.progress import progress_bar

__all__ = ["LabelledPredictions", "evaluate", "predict_labelled", "score"]

log = logging.getLogger(__name__)


@dataclass
class LabelledPredictions:
    """Per-head probabilities `[N, K]` (NaN where a head did not run), labels `[N, K]` and routes."""

    heads: dict[str, torch.Tensor]
    labels: torch.Tensor
    routes: list[str]
    study_ids: list[str]


def predict_labelled(
    predictor: Predictor, dataset: StudyDataset, batch_size: int = 16, workers: int = 0
) -> LabelledPredictions:
    """Run a predictor over every study of a labelled dataset (studies with no readable view are left out).

    Workers decode one study per task, as `Predictor.batches` does, and the batches are made here.
    """
    gate = predictor.gate(workers)
    loader = study_loader(
        Gated(InDtype(dataset, predictor.batch_dtype), gate),
        batch_size=batch_size,
        workers=workers,
        multiprocessing_context=gate.context if workers else None,
    )
    heads: dict[str, list[torch.Tensor]] = {h: [] for h in OUTPUTS}
    labels, routes, ids = [], [], []
    with progress_bar(len(dataset), "studies") as progress:
        for batch in map(collate, batched(loader, batch_size)):
            progress.update(len(batch))
            if len(batch) == 0:
                continue
            with gate.closed():
                probs = predictor.predict_batch(batch)
            for h in OUTPUTS:
                heads[h].append(probs.head(h))
            labels.append(batch.labels)
            routes += probs.routes
            ids += batch.study_ids
    if not labels:
        raise TwoviewError("none of the studies could be read, so nothing was evaluated")
    return LabelledPredictions({h: torch.cat(v) for h, v in heads.items()}, torch.cat(labels), routes, ids)


def score(
    net: TwoViewNet, dataset: StudyDataset, batch_size: int = 16, bootstrap: int = 0
) -> EvaluationReport:
    """Float32 AUROC report of `net` on a labelled dataset (used by training for its final report)."""
    predictions = predict_labelled(Predictor(net, device="cpu", fast=False), dataset, batch_size)
    return evaluation_report(
        predictions.heads, predictions.labels, predictions.routes, net.config.labels, bootstrap=bootstrap
    )


def evaluate(
    manifest: str | Path,
    model: str | Path | None = None,
    out_dir: str | Path | None = None,
    *,
    images_dir: str | Path | None = None,
    batch_size: int = 16,
    bootstrap: int = 1000,
    device: str = "auto",
    fast: bool = False,
    workers: int | None = None,
) -> EvaluationReport:
    """Evaluate a checkpoint (the demo model when None) on a manifest and write the report files."""
    net, model_path = load_model(model)
    config = net.config
    table = read_manifest(manifest, images_dir)
    shared = [name for name in config.labels if name in table.label_names]
    if not shared:
        raise TwoviewError(
            f"{manifest} has none of the model's labels ({', '.join(config.labels)}); nothing to evaluate"
        )
    missing = [name for name in config.labels if name not in table.label_names]
    if missing:
        log.warning("the manifest has no column for %s; those labels are reported as n/a", ", ".join(missing))
    dataset = StudyDataset(table.studies, table.labels_for(config.labels), config=config)
    predictor = Predictor(net, device=device, fast=fast)
    workers = default_workers(predictor.device) if workers is None else workers
    predictions = predict_labelled(predictor, dataset, batch_size=batch_size, workers=workers)
    report = evaluation_report(
        predictions.heads, predictions.labels, predictions.routes, config.labels, bootstrap=bootstrap
    )
    out = Path(out_dir) if out_dir is not None else Path(manifest).with_name("evaluation")
    out.mkdir(parents=True, exist_ok=True)
    title = f"Evaluation of {model_path.name} on {Path(manifest).name}"
    report.notice = config.notice
    write_atomic(out / "report.md", report.to_markdown(title))
    if config.notice:
        log.warning("%s", config.notice)
    payload = {"model": str(model_path), "manifest": str(manifest), "bootstrap_rounds": bootstrap}
    write_atomic(out / "report.json", json.dumps({**payload, **report.to_dict()}, indent=2))
    plot_roc_curves(predictions.heads, predictions.labels, config.labels, out / "roc_curves.png")
    log.info("evaluation report written to %s", out)
    return report
