"""`twoview predict --dicomweb URL`: studies from a PACS, predicted as a folder is, their results stored back.

Studies are fetched a chunk at a time into a working folder beside the output
(`.<out stem>.dicomweb/studies`), predicted with the folder machinery (same output, errors file and
resume), their DICOM results stored with STOW-RS, and the chunk deleted, so the disk holds one chunk.
`<out stem>.dicomweb.csv` records which studies are done and whose results are stored: a rerun skips
the first and first stores what the second lacks. Result UIDs derive from the study and the model, so
a result sent twice (a kill between a store and its record) is still one object in the PACS.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import islice
from pathlib import Path

from pipeline.deidentify import Deidentifier, scrubbed_logs
from pipeline.dicom_results import DicomResults
from pipeline.dicomweb import IMAGE_MODALITIES, DicomwebError, Pacs
from pipeline.errors import TwoviewError
from pipeline.outputs import EventsFile, events_path, output_format
from pipeline.predict import PredictionOutput, Predictor, PredictSummary, start_summary
from pipeline.progress import progress_bar
from pipeline.studies import scan_folder

__all__ = ["PacsInterrupted", "PacsSummary", "predict_pacs", "working_folder"]

logger = logging.getLogger(__name__)


class PacsInterrupted(TwoviewError):
    """The PACS went away (or refused a request) mid-run; what was done is kept and a rerun resumes."""


@dataclass
class PacsSummary:
    """What a DICOMweb run did: the prediction summary, and the studies found, fetched and stored."""

    url: str
    predict: PredictSummary | None = None
    found: int = 0
    fetched: int = 0  # studies fetched in this run
    images: int = 0  # instances fetched in this run
    stored: int = 0  # studies whose results were stored in this run
    nothing: list[str] = field(default_factory=list)  # fetched studies with no radiograph series
    seconds: float = 0.0

    def __str__(self) -> str:
        text = f"{self.predict}; PACS {self.url}: {self.found} studies found, {self.fetched} fetched ({self.images} images)"
        if self.stored:
            text += f", results of {self.stored} stored"
        return text + f" in {self.seconds:.1f} s"


def working_folder(out_path: str | Path) -> Path:
    """Where a DICOMweb run keeps the chunk it is predicting and the results waiting to be stored."""
    out_path = Path(out_path)
    return out_path.with_name(f".{out_path.stem}.dicomweb")


def predict_pacs(
    pacs: Pacs,
    out_path: str | Path,
    predictor: Predictor,
    *,
    model_path: str | Path | None = None,
    study_uids: Sequence[str] = (),
    since: date | None = None,
    results: DicomResults | None = None,
    store: bool = False,
    keep_results: bool = True,
    deidentify: Deidentifier | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    chunk: int = 16,
) -> PacsSummary:
    """Predict the PACS's studies (`study_uids`, else every radiograph study since `since`) into `out_path`.

    `results` writes each study's DICOM results; `store` sends them back to the PACS (and removes
    them afterwards unless `keep_results`). A PACS that goes away raises `PacsInterrupted`.
    """
    out_path = Path(out_path)
    output_format(out_path)
    if store and results is None:
        raise TwoviewError("storing results in the PACS needs DICOM results to store")
    if chunk < 1:
        raise TwoviewError(f"the fetch chunk must be at least 1 study, got {chunk}")
    images = working_folder(out_path) / "studies"
    shutil.rmtree(images, ignore_errors=True)  # the chunk of an interrupted run
    run = _Run(pacs, out_path, predictor, results, store, keep_results, batch_size, workers, chunk, images)
    start = time.perf_counter()
    local = deidentify.under(images) if deidentify is not None else None
    with scrubbed_logs(local):
        uids = list(dict.fromkeys(study_uids)) or pacs.find_studies(since)
        if not uids:
            since_text = f" since {since:%Y-%m-%d}" if since else ""
            raise DicomwebError(f"PACS {pacs.url} has no {'/'.join(IMAGE_MODALITIES)} studies{since_text}")
        run.summary.found = len(uids)
        run.summary.predict = start_summary(out_path, model_path, predictor.config, len(uids))
        images.mkdir(parents=True)
        try:
            run.predict(uids, local)
        finally:
            run.summary.seconds = run.summary.predict.seconds = time.perf_counter() - start
            shutil.rmtree(images, ignore_errors=True)
    logger.info("%s", run.summary)
    return run.summary


class _Run:
    """One `predict_pacs` call: its settings, its open files and its summary."""

    def __init__(
        self,
        pacs: Pacs,
        out_path: Path,
        predictor: Predictor,
        results: DicomResults | None,
        store: bool,
        keep_results: bool,
        batch_size: int | None,
        workers: int | None,
        chunk: int,
        images: Path,
    ) -> None:
        self.pacs, self.out_path, self.predictor, self.results = pacs, out_path, predictor, results
        self.store, self.keep_results = store, keep_results
        self.batch_size, self.workers, self.chunk, self.images = batch_size, workers, chunk, images
        self.summary = PacsSummary(pacs.url)

    def predict(self, uids: list[str], deidentify: Deidentifier | None) -> None:
        summary = self.summary.predict
        with (
            PredictionOutput(
                self.out_path,
                self.predictor,
                summary,
                deidentify=deidentify,
                sink=self.results,
                relative_to=self.images,
            ) as output,
            EventsFile(events_path(self.out_path)) as events,
        ):
            try:
                if self.store:
                    self._store_earlier(uids, output, events)
                done = output.predictions.done | events.done
                todo = [u for u in uids if output.key(u) not in done]
                summary.skipped = len(uids) - len(todo)
                with progress_bar(len(todo), "studies") as progress:
                    for part in _chunks(todo, self.chunk):
                        self._chunk(part, output, events, deidentify)
                        progress.update(len(part))
            except DicomwebError as err:
                raise PacsInterrupted(
                    f"{err}. Stopped: {summary.predicted} studies predicted and the results of "
                    f"{self.summary.stored} stored in this run are kept in {self.out_path}; "
                    "run the same command again to resume"
                ) from err

    def _chunk(
        self, uids: list[str], output: PredictionOutput, events: EventsFile, deidentify: Deidentifier | None
    ) -> None:
        """Fetch, predict, record, store and delete one chunk of studies."""
        for uid in uids:
            count = self.pacs.fetch_study(uid, self.images / uid)
            self.summary.fetched += 1
            self.summary.images += count
            if count == 0:
                self.summary.nothing.append(uid)
                logger.warning(
                    "study %s has no %s series on the PACS; nothing to predict",
                    uid,
                    "/".join(IMAGE_MODALITIES),
                )
        scan = scan_folder(self.images)
        if deidentify is not None:
            deidentify.learn(scan.studies, scan.set_aside)
        output.set_aside(scan.set_aside)
        for batch in self.predictor.iter_predictions(
            scan.studies, batch_size=self.batch_size, workers=self.workers
        ):
            output.write(batch)
        events.write("done", map(output.key, uids))
        if self.store:
            self._store(uids, output, events)
        shutil.rmtree(self.images)
        self.images.mkdir()

    def _store_earlier(self, uids: list[str], output: PredictionOutput, events: EventsFile) -> None:
        """Store the results of studies an earlier run predicted but did not get to store."""
        done = output.predictions.done | events.done
        waiting = [u for u in uids if output.key(u) in done and output.key(u) not in events.stored]
        pending = [u for u in waiting if self.results.files(u)]
        if len(pending) < len(waiting):
            logger.warning(
                "%d studies predicted by an earlier run have no DICOM results to store (was it run without "
                "--store or --dicom-out?); delete their rows from %s to predict them again",
                len(waiting) - len(pending),
                self.out_path,
            )
        if pending:
            logger.info("storing the results of %d studies an earlier run predicted", len(pending))
        for part in _chunks(pending, self.chunk):
            self._store(part, output, events)

    def _store(self, uids: list[str], output: PredictionOutput, events: EventsFile) -> None:
        files = {uid: self.results.files(uid) for uid in uids}
        files = {uid: paths for uid, paths in files.items() if paths}
        self.pacs.store([p for paths in files.values() for p in paths])
        events.write("stored", map(output.key, files))
        self.summary.stored += len(files)
        if not self.keep_results:
            for paths in files.values():
                for path in paths:
                    path.unlink(missing_ok=True)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while part := list(islice(iterator, size)):
        yield part
