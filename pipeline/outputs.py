"""Prediction files: the row format and crash-safe CSV / JSON Lines writers that resume.

Rows are appended a batch at a time with one write + flush + fsync, so a killed run leaves at most one
partial line at the end; reopening the file cuts that line off and reads back which studies are done.
A file is only ever repaired or extended when it is one of ours: its first line must be the header
(or first object) this run would write, checked before anything is cut. One writer at a time: each
open file holds an exclusive lock, so a second job on the same output is refused, never interleaved.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
import os
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from models.names import HEADS
from pipeline.errors import TwoviewError
from pipeline.records import StudyPrediction
from pipeline.studies import SetAside

__all__ = [
    "ERROR_COLUMNS",
    "EVENT_COLUMNS",
    "EventsFile",
    "FORMATS",
    "ErrorsFile",
    "OutputError",
    "PredictionsFile",
    "csv_line",
    "error_row",
    "errors_path",
    "events_path",
    "output_format",
    "prediction_bytes",
    "prediction_columns",
    "prediction_row",
]

logger = logging.getLogger(__name__)

#: File suffixes and the format each one writes.
FORMATS: dict[str, str] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ERROR_COLUMNS: tuple[str, ...] = ("path", "study_id", "kind", "reason")
EVENT_COLUMNS: tuple[str, ...] = ("study_id", "event")
_FIXED_COLUMNS = ("study_id", "route", "frontal_file", "lateral_file")
_DIGITS = 6

Row = dict[str, Any]
T = TypeVar("T")


class OutputError(TwoviewError):
    """An output file that cannot be written or resumed (wrong suffix, other columns, damaged lines)."""


def output_format(path: str | Path) -> str:
    """ "csv" or "jsonl" from the file suffix; anything else is refused with the choices."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"{path}: unknown output format {suffix or '(no suffix)'!r}; use .csv or .jsonl")
    return FORMATS[suffix]


def errors_path(path: str | Path) -> Path:
    """Where the files set aside go: `<out stem>.errors.csv` next to the predictions."""
    path = Path(path)
    return path.with_name(f"{path.stem}.errors.csv")


def events_path(path: str | Path) -> Path:
    """Where a DICOMweb run records what it did per study: `<out stem>.dicomweb.csv` next to the predictions."""
    path = Path(path)
    return path.with_name(f"{path.stem}.dicomweb.csv")


def prediction_columns(labels: Sequence[str], thresholds: Mapping[str, float]) -> list[str]:
    """Study id, route, files, then per label: final, each head, and threshold + call where one is set."""
    columns = list(_FIXED_COLUMNS)
    for label in labels:
        columns += [label, *(f"{label}_{head}" for head in HEADS)]
        if label in thresholds:
            columns += [f"{label}_threshold", f"{label}_call"]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise OutputError(f"the model's label names give repeated output columns: {', '.join(repeated)}")
    return columns


def prediction_row(prediction: StudyPrediction, thresholds: Mapping[str, float]) -> Row:
    """One study as a flat mapping in `prediction_columns` order; None where a head did not run."""
    row: Row = {
        "study_id": prediction.study_id,
        "route": prediction.route,
        "frontal_file": _path_text(prediction.frontal_file),
        "lateral_file": _path_text(prediction.lateral_file),
    }
    for label, value in prediction.final.items():
        row[label] = _round(value)
        for head in HEADS:
            row[f"{label}_{head}"] = _round(prediction.head(head)[label])
        if label in thresholds:
            row[f"{label}_threshold"] = _round(thresholds[label])
            row[f"{label}_call"] = prediction.calls.get(label)
    return row


def error_row(item: SetAside) -> Row:
    """One file set aside (or a study that failed, with no path) as an errors-file row."""
    return {
        "path": _path_text(item.path) or "",
        "study_id": item.study_id or "",
        "kind": item.kind,
        "reason": item.reason,
    }


def _round(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), _DIGITS)


def _path_text(path: Path | str | None) -> str | None:
    return None if path is None or str(path) == "" else str(path)


class _AppendFile(ABC):
    """An append-only file of complete lines, written a batch at a time and fsynced; locked while open."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(path)
        try:
            self._check_ours()
            cut = _drop_partial_line(self.path)
            if cut:
                logger.warning(
                    "%s: removed an incomplete last line (%d bytes) left by an interrupted run", path, cut
                )
            fresh = self.path.stat().st_size == 0
            if not fresh:
                rows = self.existing()
                next(rows, None)  # checks the header / first row before anything is appended
                rows.close()
            self._file = self.path.open("a", encoding="utf-8", newline="")
        except BaseException:
            os.close(self._lock)
            raise
        if fresh:
            self._write_text(self._header())

    def write(self, rows: Iterable[Row]) -> None:
        """Append rows with one write, then flush and fsync: a kill leaves whole rows or a partial tail."""
        text = "".join(self._format(row) for row in rows)
        if text:
            self._write_text(text)

    def close(self) -> None:
        """Close the file and release its lock (once)."""
        if not self._file.closed:
            self._file.close()
            os.close(self._lock)

    def _check_ours(self) -> None:
        """Refuse, before any change, a file whose first line is not what this run writes first."""
        with self.path.open("rb") as f:
            head = f.read(_HEAD_BYTES)
        line, complete = head.partition(b"\n")[0], b"\n" in head
        start = self._first_line_start()
        if not head or (not complete and (start.startswith(head) or head.startswith(start))):
            return  # empty, or a first write cut short: ours to repair
        if complete:
            self._check_first_line(line + b"\n")
            return
        raise OutputError(
            f"{self.path}: exists and is not an output twoview wrote (its first line is not a twoview "
            "header); it is left as it is. Choose another output file"
        )

    @abstractmethod
    def _first_line_start(self) -> bytes:
        """What the first line of a file of ours begins with."""

    @abstractmethod
    def _check_first_line(self, line: bytes) -> None:
        """Raise `OutputError` unless `line` is the first line this run would write."""

    def _write_text(self, text: str) -> None:
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())

    def _header(self) -> str:
        return ""

    @abstractmethod
    def _format(self, row: Row) -> str:
        """One row as one complete line."""

    @abstractmethod
    def existing(self) -> Iterator[Row]:
        """The rows already in the file, checked against this run's columns."""


class _CsvFile(_AppendFile):
    """CSV with one header line; blank cells for None; line breaks in text are written as `\\n`."""

    def _header(self) -> str:
        return csv_line(self.columns)

    def _first_line_start(self) -> bytes:
        return self._header().encode()

    def _check_first_line(self, line: bytes) -> None:
        if line == self._header().encode():
            return
        try:
            found = next(csv.reader([line.decode("utf-8")]), [])
        except (UnicodeDecodeError, csv.Error):
            found = []
        if found[:1] == self.columns[:1]:  # a twoview output with other columns: say which
            raise OutputError(
                f"{self.path}: has other columns than this run writes ({_diff(found, self.columns)}); "
                "was it written by another model? Choose another output file or delete it"
            )
        raise OutputError(
            f"{self.path}: exists and is not an output twoview wrote (its header is not a twoview header); "
            "it is left as it is. Choose another output file"
        )

    def _format(self, row: Row) -> str:
        return csv_line([_csv_cell(row.get(c)) for c in self.columns])

    def existing(self) -> Iterator[Row]:
        with self.path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            if header != self.columns:
                raise OutputError(
                    f"{self.path}: has other columns than this run writes ({_diff(header, self.columns)}); "
                    "was it written by another model? Choose another output file or delete it"
                )
            for cells in reader:
                if cells:
                    yield dict(zip(self.columns, cells, strict=False))


class _JsonlFile(_AppendFile):
    """JSON Lines: one object per line with the columns as keys, null where a value is missing."""

    def _first_line_start(self) -> bytes:
        return ("{" + json.dumps(self.columns[0]) + ": ").encode()

    def _check_first_line(self, line: bytes) -> None:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            row = None
        if isinstance(row, dict) and list(row)[:1] == self.columns[:1]:
            self._parse(line.decode("utf-8"), 1)  # a twoview output: names the other fields, if any
            return
        raise OutputError(
            f"{self.path}: exists and is not an output twoview wrote (its first line is not a twoview "
            "row); it is left as it is. Choose another output file"
        )

    def _format(self, row: Row) -> str:
        return json.dumps({c: row.get(c) for c in self.columns}, ensure_ascii=False) + "\n"

    def existing(self) -> Iterator[Row]:
        with self.path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    yield self._parse(line, number)

    def _parse(self, line: str, number: int) -> Row:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise OutputError(f"{self.path}, line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict) or list(row) != self.columns:
            keys = list(row) if isinstance(row, dict) else []
            raise OutputError(
                f"{self.path}, line {number}: has other fields than this run writes "
                f"({_diff(keys, self.columns)}); choose another output file or delete it"
            )
        return row


class PredictionsFile:
    """The predictions output (CSV or JSON Lines by suffix), resumed: `done` holds the study ids already in it."""

    def __init__(self, path: str | Path, labels: Sequence[str], thresholds: Mapping[str, float]) -> None:
        self.path = Path(path)
        self.thresholds = dict(thresholds)
        kind = _CsvFile if output_format(self.path) == "csv" else _JsonlFile
        self._file = _open(kind, self.path, prediction_columns(labels, self.thresholds))
        self.done: set[str] = _read(self._file, lambda row: str(row["study_id"]))

    def write(self, predictions: Sequence[StudyPrediction]) -> None:
        """Append one batch of predicted studies (failed ones belong in the errors file)."""
        self._file.write(prediction_row(p, self.thresholds) for p in predictions)
        self.done.update(p.study_id for p in predictions)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PredictionsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ErrorsFile:
    """The `path, study_id, kind, reason` CSV of files set aside; a row already in it is not written again."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _open(_CsvFile, self.path, ERROR_COLUMNS)
        self._seen = _read(self._file, _error_key)
        self.written = 0

    def write(self, items: Iterable[SetAside]) -> None:
        """Append the items not yet listed, in one write."""
        rows = []
        for row in map(error_row, items):
            key = _error_key(row)
            if key not in self._seen:
                self._seen.add(key)
                rows.append(row)
        self._file.write(rows)
        self.written += len(rows)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ErrorsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventsFile:
    """The `study_id, event` CSV of a DICOMweb run, resumed: `done` and `stored` hold the study ids so far.

    "done": fetched and predicted (or found with nothing to predict); "stored": its DICOM results are in the PACS.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _open(_CsvFile, self.path, EVENT_COLUMNS)
        events = _read(self._file, lambda row: (row["study_id"], row["event"]))
        self.done = {study for study, event in events if event == "done"}
        self.stored = {study for study, event in events if event == "stored"}

    def write(self, event: str, study_ids: Iterable[str]) -> None:
        """Record `event` ("done" or "stored") for each study, in one write."""
        ids = list(study_ids)
        self._file.write({"study_id": study, "event": event} for study in ids)
        (self.done if event == "done" else self.stored).update(ids)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_HEAD_BYTES = 1 << 20  # more than any header line (a few KB even with hundreds of labels)


def _lock(path: Path) -> int:
    """An exclusive lock on the output (created if missing), or `OutputError` if another writer holds it.

    A `flock` on the file itself: the kernel releases it when its holder exits, even when killed,
    so there is never a stale lock to clear; two jobs of one process conflict too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOCTTY | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutputError(f"{path}: not a regular file; choose another output file")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise OutputError(
            f"{path} is being written by another twoview job right now; wait until it has finished "
            "(running it again then resumes it) or choose another output file"
        ) from err
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open(kind: type[_AppendFile], path: Path, columns: Sequence[str]) -> _AppendFile:
    try:
        return kind(path, columns)
    except OSError as err:
        raise OutputError(f"{path}: cannot write the output ({err.strerror or err})") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise OutputError(f"{path}: exists but cannot be resumed: not a file this run wrote ({err})") from err


def _read(file: _AppendFile, key: Callable[[Row], T]) -> set[T]:
    """The keys of the rows already in `file` (streamed: only the keys are kept); closes it on failure."""
    try:
        return {key(row) for row in file.existing()}
    except (UnicodeDecodeError, csv.Error) as err:
        file.close()
        raise OutputError(f"{file.path}: cannot be resumed: it is not a file this run wrote ({err})") from err
    except BaseException:
        file.close()
        raise


def _error_key(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(_csv_cell(row.get(c)) for c in ERROR_COLUMNS)


def _drop_partial_line(path: Path, chunk: int = 1 << 16) -> int:
    """Truncate `path` (checked to be ours) after its last newline; returns the bytes removed."""
    with path.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            block = f.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


def csv_line(cells: Sequence[str]) -> str:
    """One CSV row as a complete line."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    """None -> blank; text with line breaks escaped, so every row is exactly one line."""
    if value is None:
        return ""
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def _diff(found: Sequence[str], expected: Sequence[str]) -> str:
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:4])}")
    if extra:
        parts.append(f"extra {', '.join(extra[:4])}")
    return "; ".join(parts) or "same names in another order"


def prediction_bytes(
    predictions: Sequence[StudyPrediction], labels: Sequence[str], thresholds: Mapping[str, float]
) -> dict[str, bytes]:
    """The predicted studies as `twoview predict` writes them, in memory: {"csv": ..., "jsonl": ...}."""
    done = [p for p in predictions if p.ok]
    out = {}
    with tempfile.TemporaryDirectory(prefix="twoview-download-") as tmp:
        for kind in ("csv", "jsonl"):
            path = Path(tmp) / f"predictions.{kind}"
            with PredictionsFile(path, labels, thresholds) as file:
                file.write(done)
            out[kind] = path.read_bytes()
    return out
