"""`twoview merge`: join the outputs of sharded `twoview predict --shard K/N` runs into one file.

Every study must be in exactly one shard; with the predicted folder given, every study of it must be
in some shard (predicted, or listed as failed in an errors file).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.atomic import write_atomic
from pipeline.outputs import ERROR_COLUMNS, csv_line, errors_path, output_format
from pipeline.shards import ShardError
from pipeline.studies import scan_folder

__all__ = ["MergeSummary", "merge_outputs"]


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
        write_atomic(output, _csv_text(columns, ordered))
    else:
        write_atomic(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    write_atomic(errors_path(output), _csv_text(list(ERROR_COLUMNS), errors))
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
