"""Which server paths the app may use: data folders the operator configures, outputs in the app folder.

There is no login: whoever reaches the app acts as the server's user. So a path typed into a page
is used only when it resolves, symbolic links followed, inside a data folder: the folders in
`$TWOVIEW_DATA_DIRS` (os.pathsep-separated; `twoview app --data-dir DIR` adds to it), else the
bundled sample studies, and always the app's own folder. Outputs go inside the app folder only.
A path outside is refused without saying whether it exists.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable
from pathlib import Path

from app import common
from pipeline.errors import ManifestError, TwoviewError
from pipeline.manifest import read_manifest, write_manifest

__all__ = ["DATA_DIRS_ENV", "PathError", "confined_manifest", "data_dirs", "output_path", "readable_path"]

DATA_DIRS_ENV = "TWOVIEW_DATA_DIRS"


class PathError(TwoviewError):
    """A path the app will not use: outside the configured folders, or not usable at all."""


def data_dirs() -> list[Path]:
    """The folders the app may read, resolved: the configured ones (else the samples), then the app folder."""
    configured = [
        Path(p).expanduser() for p in os.environ.get(DATA_DIRS_ENV, "").split(os.pathsep) if p.strip()
    ]
    folders = [*(configured or [common.SAMPLE_STUDIES]), common.app_dir()]
    return _unique(_resolve(f) for f in folders)


def readable_path(text: str, what: str, *, also: Iterable[Path] = ()) -> Path:
    """The file or folder `text` names, resolved, if it lies inside a data folder (or one of `also`).

    A relative path is taken inside the first data folder.
    """
    text = text.strip()
    if not text:
        raise PathError(f"give a {what}")
    allowed = [*data_dirs(), *(_resolve(Path(a)) for a in also)]
    path = Path(text).expanduser()
    resolved = _resolve(path if path.is_absolute() else allowed[0] / path)
    if not any(resolved.is_relative_to(folder) for folder in allowed):
        raise PathError(
            f"{text}: this app reads only inside its data folders ({', '.join(map(str, data_dirs()))}). "
            f"The operator can add folders with {DATA_DIRS_ENV} or 'twoview app --data-dir DIR'"
        )
    return resolved


def output_path(text: str, folder: Path) -> Path:
    """The output file `text` names, resolved, if it lies inside the app folder (a bare name goes into `folder`)."""
    text = text.strip()
    if not text:
        raise PathError("give an output file name")
    path = Path(text).expanduser()
    resolved = _resolve(path if path.is_absolute() else folder / path)
    home = _resolve(common.app_dir())
    if not resolved.is_relative_to(home) or resolved == home:
        raise PathError(
            f"{text}: outputs are written only inside the app folder {home}; give a file name there"
        )
    return resolved


def confined_manifest(text: str, folder: Path) -> Path:
    """A copy in `folder` of the manifest `text` names, once every image it lists is inside a data folder.

    The paths are checked before anything else reads the manifest (so its errors cannot tell whether a
    file outside exists), and the copy names each image by its resolved path: training reads the copy.
    """
    source = readable_path(text, "manifest")
    try:
        rows = list(csv.reader(io.StringIO(source.read_text(encoding="utf-8-sig"))))
    except FileNotFoundError as err:
        raise ManifestError(f"{source}: manifest not found") from err
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ManifestError(f"{source}: cannot read the manifest ({err})") from err
    header = [cell.strip() for cell in rows[0]] if rows else []
    for line, row in enumerate(rows[1:], start=2):
        for column in ("frontal", "lateral"):
            index = header.index(column) if column in header else None
            cell = row[index].strip() if index is not None and index < len(row) else ""
            if cell:
                try:
                    readable_path(str(source.parent / cell), "image")
                except PathError as err:
                    raise PathError(f"{source}, line {line}, column {column!r}: {err}") from None
    manifest = read_manifest(source)
    values = {
        study.study_id: {
            name: None if math.isnan(value) else float(value)
            for name, value in zip(manifest.label_names, manifest.labels[i].tolist(), strict=True)
        }
        for i, study in enumerate(manifest.studies)
    }
    return write_manifest(manifest.studies, folder / f"{source.stem}.csv", manifest.label_names, values)


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # a loop of links, an unreadable component
        raise PathError(f"{path}: cannot be resolved ({err})") from err


def _unique(paths: Iterable[Path]) -> list[Path]:
    seen: list[Path] = []
    for path in paths:
        if path not in seen:
            seen.append(path)
    return seen
