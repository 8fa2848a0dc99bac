"""Prediction files: the row format, crash-safe CSV / JSON Lines writers that resume, and a progress line.

Rows are appended a batch at a time with one write + flush + fsync, so a killed run leaves at most one
partial line at the end; reopening the file cuts that line off and reads back which studies are done.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from pipeline.errors import TwoviewError
from pipeline.studies import SetAside

if TYPE_CHECKING:
    from pipeline.predict import StudyPrediction
    from pipeline.studies import Study

__all__ = [
    "DEIDENTIFY_KEY_ENV",
    "Deidentifier",
    "ERROR_COLUMNS",
    "FORMATS",
    "HEAD_NAMES",
    "ErrorsFile",
    "OutputError",
    "PredictionsFile",
    "ProgressLine",
    "error_row",
    "csv_line",
    "errors_path",
    "output_format",
    "prediction_columns",
    "prediction_row",
]

logger = logging.getLogger(__name__)

#: The per-view heads each label reports besides its final probability.
HEAD_NAMES: tuple[str, ...] = ("frontal", "lateral", "joint")
#: File suffixes and the format each one writes.
FORMATS: dict[str, str] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ERROR_COLUMNS: tuple[str, ...] = ("path", "study_id", "kind", "reason")
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


def prediction_columns(labels: Sequence[str], thresholds: Mapping[str, float]) -> list[str]:
    """Study id, route, files, then per label: final, each head, and threshold + call where one is set."""
    columns = list(_FIXED_COLUMNS)
    for label in labels:
        columns += [label, *(f"{label}_{head}" for head in HEAD_NAMES)]
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
        for head in HEAD_NAMES:
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
    """An append-only file of complete lines, written a batch at a time and fsynced."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        if fresh:
            self._write_text(self._header())

    def write(self, rows: Iterable[Row]) -> None:
        """Append rows with one write, then flush and fsync: a kill leaves whole rows or a partial tail."""
        text = "".join(self._format(row) for row in rows)
        if text:
            self._write_text(text)

    def close(self) -> None:
        self._file.close()

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
    """Truncate `path` after its last newline (an interrupted write's tail); returns the bytes removed."""
    if not path.exists():
        path.touch()
        return 0
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


class ProgressLine:
    """Progress of a long job: a `\\r`-redrawn line (rate, ETA) on a terminal, a log line every `interval` s otherwise."""

    def __init__(
        self, total: int, unit: str, *, stream: TextIO | None = None, interval: float = 10.0
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self._tty and (now - self._last >= 0.1 or self.done >= self.total):
            self.stream.write("\r" + self.text() + "\033[K")
            self.stream.flush()
            self._last = now
        elif not self._tty and now - self._last >= self.interval:
            logger.info("%s", self.text())
            self._last = now

    def close(self) -> None:
        if self._tty and self.total:
            self.stream.write("\r" + self.text() + "\033[K\n")
            self.stream.flush()

    def text(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done}/{self.total} {self.unit} ({percent:.0f}%), {rate:.1f} {self.unit}/s, "
            f"ETA {_duration(left)}"
        )


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


#: The environment variable holding the secret key of `twoview predict --deidentify`.
DEIDENTIFY_KEY_ENV = "TWOVIEW_DEIDENTIFY_KEY"
_MIN_KEY_BYTES = 16
_DIGEST_CHARS = 16  # 64 bits of HMAC-SHA256: no collision in any real archive
_PLAIN_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}")


class Deidentifier:
    """Keyed pseudonyms for outputs: study ids and every path part become HMAC-SHA256 prefixes.

    The same key gives the same pseudonyms, so de-identified runs resume and merge; without the key
    they cannot be reversed or checked against a guessed UID. Paths are made relative to `root`.
    """

    def __init__(self, key: str | bytes, root: str | Path | None = None) -> None:
        key = key.encode("utf-8") if isinstance(key, str) else key
        if len(key) < _MIN_KEY_BYTES:
            raise OutputError(
                f"the de-identification key must be at least {_MIN_KEY_BYTES} characters; "
                f"set ${DEIDENTIFY_KEY_ENV} to a long random secret (e.g. `openssl rand -hex 32`)"
            )
        self._key = key
        self.root = Path(root) if root is not None else None
        self._roots = () if self.root is None else tuple(dict.fromkeys((self.root, self.root.resolve())))
        self._known: dict[str, str] = {}  # raw text -> pseudonym, for scrubbing free text
        self._pattern: re.Pattern[str] | None = None

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> Deidentifier:
        """The key from `$TWOVIEW_DEIDENTIFY_KEY`; missing is an error naming the variable."""
        key = os.environ.get(DEIDENTIFY_KEY_ENV, "")
        if not key:
            raise OutputError(
                f"--deidentify needs a secret key in ${DEIDENTIFY_KEY_ENV} (at least {_MIN_KEY_BYTES} "
                "characters); runs with the same key write the same pseudonyms"
            )
        return cls(key, root)

    def under(self, root: str | Path) -> Deidentifier:
        """The same key with paths made relative to `root` (the scanned folder)."""
        other = Deidentifier(self._key, root)
        other._known = self._known
        return other

    def _digest(self, kind: str, text: str) -> str:
        message = f"{kind}\0{text}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:_DIGEST_CHARS]

    def _remember(self, raw: str, pseudonym: str) -> None:
        if len(raw) >= 6 and self._known.get(raw) != pseudonym:  # short ids would match unrelated text
            self._known[raw] = pseudonym
            self._pattern = None

    def study_id(self, study_id: str) -> str:
        """The pseudonym of a study id: "s" and 16 hex digits."""
        pseudonym = f"s{self._digest('study', study_id)}"
        self._remember(study_id, pseudonym)
        return pseudonym

    def path(self, path: str | PurePath) -> str:
        """The path under `root` with every part replaced by its pseudonym (a short suffix like .dcm kept)."""
        path = PurePath(path)
        parts = path.parts
        if self.root is not None:
            for root in self._roots:
                if path.is_relative_to(root):
                    parts = path.relative_to(root).parts
                    break
        parts = tuple(p for p in parts if p not in ("/", ""))
        if not parts:
            return "."
        names = [f"d{self._digest('part', p)}" for p in parts[:-1]]
        suffix = PurePath(parts[-1]).suffix
        suffix = suffix if _PLAIN_SUFFIX.fullmatch(suffix) else ""
        names.append(f"f{self._digest('part', parts[-1])}{suffix}")
        pseudonym = "/".join(names)
        self._remember(str(path), pseudonym)
        if self.root is not None and path.is_relative_to(self.root):
            self._remember(path.relative_to(self.root).as_posix(), pseudonym)
        return pseudonym

    def names_a_file(self, value: object) -> bool:
        """True for a path under `root` (not root itself) or one met before: a file to write as a pseudonym."""
        if not isinstance(value, PurePath):
            return False
        return str(value) in self._known or any(value != r and value.is_relative_to(r) for r in self._roots)

    def learn(self, studies: Iterable[Study], set_aside: Iterable[SetAside]) -> None:
        """Remember every id and path of a run, so `text` can replace them in free-text reasons."""
        for study in studies:
            self.study_id(study.study_id)
            for source in study.sources:
                self.path(source.path)
        for item in set_aside:
            self.path(item.path)
            if item.study_id:
                self.study_id(item.study_id)

    def text(self, text: str) -> str:
        """Free text (a reason, a log line) with every known id and path, and any path under root, replaced."""
        if self._known:
            if self._pattern is None:
                keys = sorted(self._known, key=len, reverse=True)
                self._pattern = re.compile("|".join(map(re.escape, keys)))
            text = self._pattern.sub(lambda m: self._known[m.group(0)], text)
        if self.root is not None:
            under = re.escape(str(self.root).rstrip("/")) + r"/[^\s:;,()'\"]*"
            text = re.sub(under, lambda m: self.path(m.group(0)), text)
        return text

    def prediction(self, prediction: StudyPrediction) -> StudyPrediction:
        """A prediction whose study id and files are pseudonyms."""
        files = {
            name: None if value is None else Path(self.path(value))
            for name, value in (
                ("frontal_file", prediction.frontal_file),
                ("lateral_file", prediction.lateral_file),
            )
        }
        return replace(
            prediction,
            study_id=self.study_id(prediction.study_id),
            errors=tuple(map(self.set_aside, prediction.errors)),
            **files,
        )

    def set_aside(self, item: SetAside) -> SetAside:
        """A set-aside file with its path, study id and reason de-identified."""
        return replace(
            item,
            path=Path(self.path(item.path)),
            study_id=self.study_id(item.study_id) if item.study_id else item.study_id,
            reason=self.text(item.reason),
        )

    def log_filter(self) -> logging.Filter:
        """A filter that rewrites log records: paths and known ids in the message, its arguments and traceback."""
        return _ScrubFilter(self)


class _ScrubFilter(logging.Filter):
    """Rewrites each record in place (every handler after it sees the scrubbed text)."""

    def __init__(self, deidentifier: Deidentifier) -> None:
        super().__init__()
        self.deidentifier = deidentifier

    def filter(self, record: logging.LogRecord) -> bool:
        deid = self.deidentifier
        if getattr(record, "_twoview_scrubbed", False):
            return True
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if isinstance(record.args, tuple):
            record.args = tuple(deid.path(a) if deid.names_a_file(a) else a for a in record.args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = deid.text(message), ()
        if record.exc_text:
            record.exc_text = deid.text(record.exc_text)
        record._twoview_scrubbed = True
        return True
