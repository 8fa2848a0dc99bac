"""Sharded prediction: a deterministic share of a folder's studies per machine, and merging the outputs.

`twoview predict FOLDER --shard K/N` keeps the studies whose id hashes to shard K (1..N), so a SLURM
array, a Kubernetes indexed job or Ray tasks can each take one share of the same folder.
`twoview merge OUT SHARD_OUTPUTS...` joins the shard files and checks every study is there once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import TwoviewError
from pipeline.outputs import ERROR_COLUMNS, csv_line, errors_path, output_format
from pipeline.studies import SetAside, Study, scan_folder

__all__ = ["MergeSummary", "Shard", "ShardError", "merge_outputs", "parse_shard", "select"]


class ShardError(TwoviewError):
    """A shard that cannot be parsed, or shard outputs that do not join into one complete result."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1..count) of `count`."""

    index: int
    count: int

    def holds(self, key: str) -> bool:
        """Whether `key` (a study id, or a file path for unreadable files) belongs to this shard."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'K/N' with 1 <= K <= N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ShardError(f"--shard must look like K/N (for example 2/8), got {text!r}") from err
    if not 1 <= index <= count:
        raise ShardError(f"--shard {text}: K must be between 1 and N")
    return Shard(index, count)


def select(
    studies: Sequence[Study], set_aside: Sequence[SetAside], shard: Shard
) -> tuple[tuple[Study, ...], tuple[SetAside, ...]]:
    """The studies of one shard, and the set-aside files that belong to it (by study, else by path)."""
    mine = tuple(s for s in studies if shard.holds(s.study_id))
    aside = tuple(a for a in set_aside if shard.holds(a.study_id or str(a.path)))
    return mine, aside


@dataclass
class MergeSummary:
    """What `merge_outputs` wrote: studies, error rows, and the inputs it read."""

    output: Path
    studies: int
    errors: int
    inputs: int

    def __str__(self) -> str:
        return f"merged {self.inputs} shard outputs: {self.studies} studies into {self.output}, {self.errors} files set aside"


def merge_outputs(
    inputs: Sequence[str | Path], output: str | Path, folder: str | Path | None = None
) -> MergeSummary:
    """Join shard outputs (all CSV or all JSON Lines) sorted by study id, and their errors files.

    A study in two shards is an error; with `folder`, so is a study of that folder that no shard
    predicted or listed as failed.
    """
    paths = [Path(p) for p in inputs]
    output = Path(output)
    if not paths:
        raise ShardError("give the shard outputs to merge")
    kind = output_format(output)
    if any(output_format(p) != kind for p in paths):
        raise ShardError(f"shard outputs and {output} must all be {kind.upper()} files")
    columns, rows = _read_all(paths, kind)
    errors = _read_errors(paths)
    if folder is not None:
        _check_complete(Path(folder), rows, errors)
    ordered = [rows[k] for k in sorted(rows)]
    if kind == "csv":
        _atomic_write(output, _csv_text(columns, ordered))
    else:
        _atomic_write(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    _atomic_write(errors_path(output), _csv_text(list(ERROR_COLUMNS), errors))
    return MergeSummary(output, len(ordered), len(errors), len(paths))


def _read_all(paths: Sequence[Path], kind: str) -> tuple[list[str], dict[str, dict]]:
    columns: list[str] | None = None
    rows: dict[str, dict] = {}
    where: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise ShardError(f"{path}: no such shard output")
        file_columns, file_rows = _read_csv(path) if kind == "csv" else _read_jsonl(path)
        if columns is None:
            columns = file_columns
        elif file_columns != columns:
            raise ShardError(
                f"{path}: has other columns than {paths[0]}; were the shards run with one model?"
            )
        for row in file_rows:
            study = str(row["study_id"])
            if study in rows:
                raise ShardError(
                    f"study {study} is in both {where[study]} and {path}; each study must be in one shard"
                )
            rows[study], where[study] = row, path
    return columns or [], rows


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if "study_id" not in header:
            raise ShardError(f"{path}: not a twoview predictions file (no study_id column)")
        return header, [dict(zip(header, cells, strict=False)) for cells in reader if cells]


def _read_jsonl(path: Path) -> tuple[list[str], list[dict]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ShardError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
    if rows and not all(isinstance(r, dict) and "study_id" in r for r in rows):
        raise ShardError(f"{path}: not a twoview predictions file (rows without study_id)")
    return (list(rows[0]) if rows else []), rows


def _read_errors(paths: Sequence[Path]) -> list[dict]:
    seen: dict[tuple, dict] = {}
    for path in paths:
        errors = errors_path(path)
        if errors.is_file():
            with errors.open(encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    seen.setdefault(tuple(row.get(c, "") for c in ERROR_COLUMNS), row)
    return [seen[k] for k in sorted(seen)]


def _check_complete(folder: Path, rows: dict[str, dict], errors: Iterable[dict]) -> None:
    failed = {e.get("study_id") for e in errors if e.get("study_id")}
    missing = [
        s.study_id for s in scan_folder(folder).studies if s.study_id not in rows and s.study_id not in failed
    ]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ShardError(
            f"{len(missing)} studies of {folder} are in no shard output ({shown}); rerun their shards"
        )


def _csv_text(columns: list[str], rows: Iterable[dict]) -> str:
    body = (csv_line(["" if r.get(c) is None else str(r.get(c)) for c in columns]) for r in rows)
    return csv_line(columns) + "".join(body)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(handle, 0o644)  # mkstemp makes 0600; this is an ordinary shared file
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
