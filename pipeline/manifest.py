"""The manifest CSV: one study per row with its frontal and lateral files and its labels.

Columns: `study_id`, `frontal`, `lateral` (paths relative to the manifest's folder or to `images_dir`;
either may be blank), an optional `patient_id` (for patient-level splits), and one column per label
holding 1 (present), 0 (absent) or blank (unknown). CheXpert's -1 ("uncertain") is read as unknown.
Views come from the column a file is in, never from detection.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.atomic import write_atomic
from pipeline.errors import ManifestError
from pipeline.isolate import Runner, direct
from pipeline.studies import ImageSource, ScanResult, Study, scan_folder
from pipeline.views import View

__all__ = [
    "REQUIRED_COLUMNS",
    "Manifest",
    "manifest_from_folder",
    "read_label_table",
    "read_manifest",
    "write_manifest",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("study_id", "frontal", "lateral")
_RESERVED = (*REQUIRED_COLUMNS, "patient_id")
_VIEW_COLUMNS = {"frontal": View.FRONTAL, "lateral": View.LATERAL}
_VALUE_HELP = "use 1 (present), 0 (absent) or leave it blank (unknown); -1 also means unknown"


@dataclass(frozen=True)
class Manifest:
    """Studies in file order, their labels `[N, K]` (NaN = unknown), label names and patient ids."""

    path: Path
    studies: tuple[Study, ...]
    labels: np.ndarray = field(repr=False)
    label_names: tuple[str, ...]
    patient_ids: tuple[str, ...]  # the patient_id column, else each study's own id

    def __len__(self) -> int:
        return len(self.studies)

    def labels_for(self, names: Sequence[str]) -> np.ndarray:
        """The label matrix in another label order; labels the manifest lacks are all unknown (NaN)."""
        out = np.full((len(self.studies), len(names)), np.nan, dtype=np.float32)
        for j, name in enumerate(names):
            if name in self.label_names:
                out[:, j] = self.labels[:, self.label_names.index(name)]
        return out


def read_manifest(
    path: str | Path, images_dir: str | Path | None = None, labels: Sequence[str] | None = None
) -> Manifest:
    """Read and check a manifest; every problem is a `ManifestError` naming the file, line and column.

    `labels` picks (and orders) the label columns; by default every non-reserved column is a label.
    """
    path = Path(path)
    base = Path(images_dir) if images_dir is not None else path.parent
    rows = _read_rows(path)
    if not rows:
        raise ManifestError(
            f"{path}: the manifest is empty; it needs a header: {', '.join(REQUIRED_COLUMNS)}"
        )
    header_line, header = rows[0]
    columns = _check_header(path, header)
    label_names = _label_columns(path, columns, labels)

    studies: list[Study] = []
    values: list[list[float]] = []
    patients: list[str] = []
    first_line: dict[str, int] = {}
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise ManifestError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}")
        cells = {name: row[i].strip() for name, i in columns.items()}
        study_id = cells["study_id"]
        if not study_id:
            raise ManifestError(f"{path}, line {line}, column 'study_id': the study id is blank")
        if study_id in first_line:
            raise ManifestError(
                f"{path}, line {line}: study id {study_id!r} is already used on line {first_line[study_id]}"
            )
        first_line[study_id] = line
        patient = cells.get("patient_id", "") or study_id
        views = {
            column: _source(path, line, column, cells[column], base, study_id, patient)
            for column in _VIEW_COLUMNS
            if cells[column]
        }
        if not views:
            raise ManifestError(
                f"{path}, line {line}: study {study_id!r} has neither a frontal nor a lateral image"
            )
        studies.append(Study(study_id, patient, views.get("frontal"), views.get("lateral")))
        values.append([_label_value(path, line, name, cells[name]) for name in label_names])
        patients.append(patient)
    matrix = np.asarray(values, dtype=np.float32).reshape(len(studies), len(label_names))
    return Manifest(path, tuple(studies), matrix, tuple(label_names), tuple(patients))


def write_manifest(
    studies: ScanResult | Iterable[Study],
    path: str | Path,
    labels: Sequence[str] = (),
    values: Mapping[str, Mapping[str, float | None]] | None = None,
) -> Path:
    """Write a manifest for scanned studies; label cells come from `values[study_id][label]`, else blank.

    Paths under the manifest's folder are written relative to it, others absolute. Written atomically.
    """
    path = Path(path)
    items = studies.studies if isinstance(studies, ScanResult) else tuple(studies)
    values = values or {}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["study_id", "patient_id", "frontal", "lateral", *labels])
    for study in items:
        known = values.get(study.study_id, {})
        writer.writerow(
            [
                study.study_id,
                study.patient_id,
                _relative(study.frontal, path.parent),
                _relative(study.lateral, path.parent),
                *(_format_value(known.get(name)) for name in labels),
            ]
        )
    return write_atomic(path, buffer.getvalue())


def read_label_table(path: str | Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    """A labels CSV (`study_id` + one column per label): the label names and each study's values (NaN = unknown).

    Values follow the manifest's rules; the table may also hold `patient_id`, `frontal` and `lateral`
    columns, which are not labels.
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise ManifestError(f"{path}: the label table is empty; it needs a study_id column and one per label")
    _, header = rows[0]
    columns = _check_header(path, header, required=("study_id",))
    labels = _label_columns(path, columns, None)
    if not labels:
        raise ManifestError(f"{path}, line 1: no label columns besides {', '.join(_RESERVED)}")
    values: dict[str, dict[str, float]] = {}
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise ManifestError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}")
        study_id = row[columns["study_id"]].strip()
        if not study_id:
            raise ManifestError(f"{path}, line {line}, column 'study_id': the study id is blank")
        values[study_id] = {
            name: _label_value(path, line, name, row[columns[name]].strip()) for name in labels
        }
    return labels, values


def manifest_from_folder(
    folder: str | Path, labels_csv: str | Path, out: str | Path, *, runner: Runner = direct
) -> Path:
    """Scan `folder` and write a training manifest whose labels come from `labels_csv` (by study id).

    `runner` reads each file (`pipeline.isolate.Isolated`: in a killable child process).
    """
    labels, values = read_label_table(labels_csv)
    scan = scan_folder(folder, runner=runner)
    if not scan.studies:
        raise ManifestError(f"{folder}: no studies found to train on")
    if not any(s.study_id in values for s in scan.studies):
        raise ManifestError(f"{labels_csv}: none of the {len(scan.studies)} studies in {folder} has a row")
    return write_manifest(scan, out, labels, values)


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) for each non-blank CSV record; a BOM (Excel) is accepted."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise ManifestError(f"{path}: manifest not found") from err
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not a UTF-8 text file; save the manifest as CSV (UTF-8)") from err
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest ({err.strerror or err})") from err
    reader = csv.reader(io.StringIO(text), strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as err:
        raise ManifestError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from err
    return rows


def _check_header(
    path: Path, header: list[str], required: Sequence[str] = REQUIRED_COLUMNS
) -> dict[str, int]:
    """Column name -> index; refuses blank or repeated names and missing required columns."""
    columns: dict[str, int] = {}
    for i, raw in enumerate(header):
        name = raw.strip()
        if not name:
            raise ManifestError(f"{path}, line 1: column {i + 1} has no name")
        if name in columns:
            raise ManifestError(f"{path}, line 1: column {name!r} appears twice")
        columns[name] = i
    for name in required:
        if name not in columns:
            raise ManifestError(
                f"{path}, line 1: missing required column {name!r}; "
                f"the header needs {', '.join(required)} and one column per label"
            )
    return columns


def _label_columns(path: Path, columns: Mapping[str, int], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return [name for name in columns if name not in _RESERVED]
    for name in labels:
        if name not in columns:
            raise ManifestError(f"{path}, line 1: missing label column {name!r}")
    return list(labels)


def _source(
    path: Path, line: int, column: str, text: str, base: Path, study_id: str, patient: str
) -> ImageSource:
    """The image named in a view column, which must exist."""
    file = Path(text)
    resolved = file if file.is_absolute() else base / file
    if not resolved.is_file():
        raise ManifestError(
            f"{path}, line {line}, column {column!r}: file not found: {text} (looked for {resolved})"
        )
    return ImageSource(
        path=resolved,
        view=_VIEW_COLUMNS[column],
        view_reason=f"manifest column {column!r}",
        view_confidence=1.0,
        study_id=study_id,
        patient_id=patient,
    )


def _label_value(path: Path, line: int, column: str, text: str) -> float:
    """1 -> 1.0, 0 -> 0.0, blank or -1 -> NaN (unknown); "1.0"-style spellings are accepted."""
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value in (0.0, 1.0):
        return value
    if value == -1.0:
        return math.nan
    raise ManifestError(
        f"{path}, line {line}, column {column!r}: {text!r} is not a label value; {_VALUE_HELP}"
    )


def _relative(source: ImageSource | None, folder: Path) -> str:
    if source is None:
        return ""
    resolved, base = source.path.resolve(), folder.resolve()
    return resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(resolved)


def _format_value(value: float | None) -> str:
    """1 and 0 as they are; None, NaN and -1 (unknown) as blank."""
    if value is None or math.isnan(value) or value == -1:
        return ""
    if value in (0, 1):
        return str(int(value))
    raise ManifestError(f"label value {value!r} cannot be written; {_VALUE_HELP}")
