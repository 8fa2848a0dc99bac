"""Group image files into studies with one frontal and one lateral view each, and say why others were set aside.

`scan_folder` reads headers only (pixels just for the files whose tags do not tell the view), so a
big folder never sits in memory. `assemble_studies` is the pure grouping step; the app calls it again
with the user's view overrides.

DICOM files group by StudyInstanceUID. Pictures without one (PNG, JPEG) group by folder: a folder
holding at most `MAX_PICTURES_PER_FOLDER_STUDY` of them is one study (the CheXpert and MIMIC-CXR-JPG
layouts: one folder per study), a folder with more is a flat export and each picture is its own study.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pipeline.dicom import XrayImage, read_header, read_image
from pipeline.errors import DimensionsError, ImageError, TwoviewError, UnsupportedModalityError
from pipeline.isolate import Runner, direct
from pipeline.parallel import parallel_map, usable_cores
from pipeline.views import View, ViewDecision, detect_view

__all__ = [
    "CHEST_BODY_PARTS",
    "MAX_PICTURES_PER_FOLDER_STUDY",
    "PARALLEL_MIN_FILES",
    "ImageSource",
    "Progress",
    "Route",
    "ScanResult",
    "SetAside",
    "SetAsideKind",
    "Study",
    "assemble_studies",
    "collect_sources",
    "is_chest",
    "scan_folder",
]

logger = logging.getLogger(__name__)

Route = Literal["joint", "frontal", "lateral"]
SetAsideKind = Literal["unreadable", "not_chest", "duplicate", "unknown_view", "excluded"]
#: Called after each file with (files done, files in total, the file just read).
Progress = Callable[[int, int, Path], None]

#: BodyPartExamined values (or parts of them) that mean a chest; blank is accepted too.
CHEST_BODY_PARTS: tuple[str, ...] = ("CHEST", "THORAX", "THORAC", "TORAX", "LUNG", "PULM", "THORAKS", "BRUST")
#: Folders with fewer files are read in this process: starting worker processes would cost more.
PARALLEL_MIN_FILES = 64
#: A folder with at most this many pictures (no StudyInstanceUID) is one study; with more, one study each.
MAX_PICTURES_PER_FOLDER_STUDY = 4
_FRONTAL_RANK = {"PA": 0, "AP": 1}
_LATERAL_RANK = {"LL": 0, "LLAT": 0, "RL": 1, "RLAT": 1}
_EXCLUDED = "excluded by the user"
_TABLE_SUFFIXES = {
    ".csv",
    ".tsv",
    ".jsonl",
    ".ndjson",
}  # manifests, label tables and our outputs beside the images


@dataclass(frozen=True)
class ImageSource:
    """One usable image file: its view (None = unknown), why, and the metadata grouping needs."""

    path: Path
    view: View | None
    view_reason: str
    view_confidence: float
    study_id: str  # the grouping key: StudyInstanceUID, else the file's path under the scanned folder
    study_uid: str = ""
    patient_id: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    accession: str = ""
    study_date: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""  # "PA", "AP", "LL", ... as tagged ("" when untagged)
    rows: int = 0
    columns: int = 0

    @classmethod
    def from_image(cls, image: XrayImage, decision: ViewDecision, study_id: str) -> ImageSource:
        """Keep the metadata of a (header-only or decoded) image, without its pixels."""
        return cls(
            path=image.path,
            view=decision.view,
            view_reason=decision.reason,
            view_confidence=float(decision.confidence),
            study_id=study_id,
            study_uid=image.study_uid,
            patient_id=image.patient_id,
            series_uid=image.series_uid,
            sop_uid=image.sop_uid,
            accession=image.accession,
            study_date=image.study_date,
            modality=image.modality,
            body_part=image.body_part,
            view_position=image.view_position,
            rows=image.rows,
            columns=image.columns,
        )

    def with_view(self, view: View | None, reason: str, confidence: float = 1.0) -> ImageSource:
        return replace(self, view=view, view_reason=reason, view_confidence=confidence)


@dataclass(frozen=True)
class SetAside:
    """A file not used, why, and the kind of reason; `study_id` is None when the file could not be read."""

    path: Path
    reason: str
    study_id: str | None = None
    kind: SetAsideKind = "unreadable"


@dataclass(frozen=True)
class Study:
    """One study: the chosen frontal and lateral images (at least one) and the files set aside."""

    study_id: str
    patient_id: str = ""
    frontal: ImageSource | None = None
    lateral: ImageSource | None = None
    set_aside: tuple[SetAside, ...] = ()

    def __post_init__(self) -> None:
        if self.frontal is None and self.lateral is None:
            raise ValueError(f"study {self.study_id!r} needs a frontal or a lateral image")

    @property
    def route(self) -> Route:
        """Which head predicts: "joint" with both views, else the one view present."""
        if self.frontal is not None and self.lateral is not None:
            return "joint"
        return "frontal" if self.frontal is not None else "lateral"

    @property
    def sources(self) -> tuple[ImageSource, ...]:
        return tuple(s for s in (self.frontal, self.lateral) if s is not None)


@dataclass(frozen=True)
class ScanResult:
    """Studies sorted by id, every file set aside (sorted by path), and the sources to re-assemble.

    `sources` are as read (before any overrides): pass them to `assemble_studies` with the full override map.
    """

    studies: tuple[Study, ...]
    set_aside: tuple[SetAside, ...]
    sources: tuple[ImageSource, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.studies)


def is_chest(body_part: str) -> bool:
    """True unless BodyPartExamined clearly names something else (blank counts as chest)."""
    text = body_part.strip().upper()
    return not text or any(part in text for part in CHEST_BODY_PARTS)


def scan_folder(
    path: str | Path,
    *,
    progress: Progress | None = None,
    verify_pixels: bool = False,
    root_study: str | None = None,
    workers: int | None = None,
    runner: Runner = direct,
    max_pixels: int | None = None,
) -> ScanResult:
    """Read every file under `path` (any name, DICOM by content) and group it into studies.

    Never stops on one bad file: unreadable, non-chest, duplicate and unknown-view files are listed
    in `set_aside` with the reason. Hidden files and CSV/TSV tables (manifests) are not read.
    `verify_pixels` decodes every image to catch damaged pixel data now rather than at training time.
    `workers` processes read the files (default: one per usable core; see `collect_sources`);
    `runner` reads each file instead (e.g. `pipeline.isolate.Isolated`, in a killable child process);
    `max_pixels` caps the pixels of all images together, files past it are set aside unread.
    """
    sources, set_aside = collect_sources(
        path,
        progress=progress,
        verify_pixels=verify_pixels,
        root_study=root_study,
        workers=workers,
        runner=runner,
        max_pixels=max_pixels,
    )
    return assemble_studies(sources, set_aside=set_aside)


def collect_sources(
    path: str | Path,
    *,
    progress: Progress | None = None,
    verify_pixels: bool = False,
    root_study: str | None = None,
    workers: int | None = None,
    runner: Runner = direct,
    max_pixels: int | None = None,
) -> tuple[list[ImageSource], list[SetAside]]:
    """Read the header of each file under `path` and decide its view; pixels only when tags cannot.

    Pictures are grouped into folder studies (see the module docstring); `root_study` names the study
    of pictures lying directly in `path` (default: the folder's own name). Folders of at least
    `PARALLEL_MIN_FILES` files are read by `workers` processes (default: the usable cores; 1 reads
    here), with the same results, in the same order, and the same progress calls. A `runner` or a
    `max_pixels` (as in `scan_folder`) reads one file at a time through the runner instead.
    """
    root = Path(path)
    try:
        root.stat()
    except FileNotFoundError as err:
        raise TwoviewError(f"{root}: no such file or folder") from err
    except OSError as err:
        raise TwoviewError(f"{root}: cannot be read ({err.strerror or err})") from err
    files, set_aside = _list_files(root)
    workers = usable_cores() if workers is None else max(1, workers)
    if runner is not direct or max_pixels is not None:
        results = _read_guarded(files, root, verify_pixels, runner, _PixelBudget(max_pixels))
    elif workers > 1 and len(files) >= PARALLEL_MIN_FILES:
        results = parallel_map(
            _read_one,
            files,
            (root, verify_pixels),
            workers=workers,
            on_crash=_crashed,
            preload=("pipeline.studies",),
        )
    else:
        results = (_read_one(file, root, verify_pixels) for file in files)
    sources: list[ImageSource] = []
    for done, (file, result) in enumerate(zip(files, results, strict=True), start=1):
        if isinstance(result, ImageSource):
            sources.append(result)
        else:
            set_aside.append(result)
        if progress is not None:
            progress(done, len(files), file)
    return group_loose_pictures(sources, root, root_study), set_aside


def _read_guarded(
    files: list[Path], root: Path, verify_pixels: bool, runner: Runner, budget: _PixelBudget
) -> Iterator[ImageSource | SetAside]:
    """Each file read through `runner`, its pixels counted against `budget` first (from its header)."""
    for file in files:
        if budget.limit is not None:
            try:
                budget.take(file, runner(read_header, file))
            except ImageError as err:
                yield SetAside(file, err.reason)
                continue
            except OSError as err:
                yield SetAside(file, f"the file cannot be read ({err.strerror or err})")
                continue
        yield _read_one(file, root, verify_pixels, runner)


def _read_one(file: Path, root: Path, verify_pixels: bool, runner: Runner = direct) -> ImageSource | SetAside:
    """One file's source, or why it is set aside: never raises, so one file cannot end a scan."""
    try:
        source = runner(_read_source, file, root, verify_pixels=verify_pixels)
    except UnsupportedModalityError as err:
        return SetAside(file, err.reason, kind="not_chest")
    except ImageError as err:
        return SetAside(file, err.reason)
    except OSError as err:
        return SetAside(file, f"the file cannot be read ({err.strerror or err})")
    except Exception as err:  # one file's surprise must not end a scan of thousands
        logger.exception("unexpected error reading %s", file)
        return SetAside(file, f"unexpected {type(err).__name__} while reading: {err}")
    if not is_chest(source.body_part):
        reason = f"not a chest X-ray: BodyPartExamined is {source.body_part!r}"
        return SetAside(file, reason, source.study_id, "not_chest")
    return source


class _PixelBudget:
    """The pixels of the images read so far, against a cap for all of them together."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, path: Path, header: XrayImage) -> None:
        """Count one image's pixels (from its header), or refuse it when they would pass the cap."""
        pixels = header.rows * header.columns
        if self.limit is not None and self.used + pixels > self.limit:
            raise DimensionsError(
                path,
                f"not read: this {header.columns}x{header.rows} image would take the images read together "
                f"past {self.limit / 1e6:.0f} megapixels ({self.used / 1e6:.0f} so far)",
            )
        self.used += pixels


def group_loose_pictures(
    sources: Iterable[ImageSource], root: str | Path, root_study: str | None = None
) -> list[ImageSource]:
    """Pictures without a StudyInstanceUID re-keyed by folder where the folder is a study (module docstring)."""
    root = Path(root)
    sources = list(sources)
    folders: dict[Path, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        if not source.study_uid:
            folders[source.path.parent].append(i)
    for folder, members in folders.items():
        if len(members) > MAX_PICTURES_PER_FOLDER_STUDY:
            continue
        if folder == root or not folder.is_relative_to(root):
            study = root_study or root.name or "pictures"
        else:
            study = folder.relative_to(root).as_posix()
        for i in members:
            sources[i] = replace(sources[i], study_id=study)
    return sources


def assemble_studies(
    sources: Iterable[ImageSource],
    overrides: Mapping[str | Path, View | str | None] | None = None,
    *,
    set_aside: Iterable[SetAside] = (),
) -> ScanResult:
    """Group sources by study id and choose one frontal and one lateral each.

    `overrides` maps a path to the view the user chose (None sets the file aside). Frontal: PA over
    AP, then the larger image, then the first path; lateral: LL over RL, then the same.
    """
    forced = {Path(p): None if v is None else View(v) for p, v in (overrides or {}).items()}
    all_sources = tuple(sorted(sources, key=lambda s: str(s.path)))
    groups: dict[str, list[ImageSource]] = defaultdict(list)
    for source in all_sources:
        if source.path in forced:
            view = forced[source.path]
            source = source.with_view(view, "set by the user" if view else _EXCLUDED)
        groups[source.study_id].append(source)

    studies: list[Study] = []
    aside = list(set_aside)
    for study_id in sorted(groups):
        group = groups[study_id]
        study_aside = [_unknown(s) for s in group if s.view is None]
        frontal, extra = _choose(group, View.FRONTAL, _FRONTAL_RANK)
        study_aside += extra
        lateral, extra = _choose(group, View.LATERAL, _LATERAL_RANK)
        study_aside += extra
        study_aside.sort(key=lambda a: str(a.path))
        aside += study_aside
        if frontal is None and lateral is None:
            continue
        patient = next((s.patient_id for s in (frontal, lateral) if s is not None and s.patient_id), "")
        studies.append(Study(study_id, patient, frontal, lateral, tuple(study_aside)))
    aside.sort(key=lambda a: str(a.path))
    return ScanResult(tuple(studies), tuple(aside), all_sources)


def _choose(
    group: list[ImageSource], view: View, rank: Mapping[str, int]
) -> tuple[ImageSource | None, list[SetAside]]:
    """The preferred source of one view and a SetAside for each other one."""

    def key(s: ImageSource) -> tuple[int, int, str]:
        return (rank.get(s.view_position, len(rank) + 1), -(s.rows * s.columns), str(s.path))

    candidates = sorted((s for s in group if s.view is view), key=key)
    if not candidates:
        return None, []
    kept = candidates[0]
    aside = []
    for other in candidates[1:]:
        if kept.sop_uid and kept.sop_uid == other.sop_uid:
            why = "a copy of the same image (same SOP Instance UID)"
        elif rank.get(kept.view_position, 99) < rank.get(other.view_position, 99):
            why = f"{kept.view_position} preferred over {other.view_position or 'untagged'}"
        elif kept.rows * kept.columns > other.rows * other.columns:
            why = "the larger image kept"
        else:
            why = "the first by path kept"
        reason = f"second {view.value} view in study {kept.study_id}; kept {kept.path} ({why})"
        aside.append(SetAside(other.path, reason, kept.study_id, "duplicate"))
    return kept, aside


def _unknown(source: ImageSource) -> SetAside:
    if source.view_reason == _EXCLUDED:
        return SetAside(source.path, _EXCLUDED, source.study_id, "excluded")
    return SetAside(source.path, f"unknown view: {source.view_reason}", source.study_id, "unknown_view")


def _crashed(file: Path) -> SetAside:
    return SetAside(file, "reading this file made the image decoder crash; the file is probably damaged")


def _read_source(path: Path, root: Path, *, verify_pixels: bool) -> ImageSource:
    """Header first; decode the pixels only when the tags do not decide the view, then drop them."""
    image = read_image(path) if verify_pixels else read_header(path)
    decision = detect_view(image)
    if decision.view is None and not image.pixels.size:
        image = read_image(path)
        decision = detect_view(image)
    return ImageSource.from_image(image, decision, image.study_uid or _path_id(path, root))


def _path_id(path: Path, root: Path) -> str:
    """A study id for a file without a StudyInstanceUID (PNG/JPEG): its path under the root, no suffix."""
    try:
        relative = path.relative_to(root) if root.is_dir() else Path(path.name)
    except ValueError:
        relative = path
    return relative.with_suffix("").as_posix()


def _list_files(root: Path) -> tuple[list[Path], list[SetAside]]:
    """Every regular file under root (or root itself), sorted, and the entries that cannot be used.

    Hidden names and CSV/TSV tables are skipped. Every entry is looked at on its own, so one that
    cannot be read (a permission error, a vanished file) is set aside with the reason and the scan
    goes on. Links to folders are not followed and links to files only inside the scanned folder;
    FIFOs, sockets and devices are set aside unopened.
    """
    try:
        if stat.S_ISREG(root.stat().st_mode):
            return [root], []
    except OSError as err:
        raise TwoviewError(f"{root}: cannot be read ({err.strerror or err})") from err
    found: list[Path] = []
    aside: list[SetAside] = []
    inside = root.resolve()
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = [e for e in listing if not e.name.startswith(".")]
        except OSError as err:
            aside.append(SetAside(folder, f"the folder cannot be read ({err.strerror or err})"))
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                    continue
            except OSError as err:
                aside.append(SetAside(path, f"cannot be read ({err.strerror or err})"))
                continue
            problem = _not_a_file(path, inside)
            if problem:
                aside.append(SetAside(path, problem))
            elif path.suffix.lower() not in _TABLE_SUFFIXES:
                found.append(path)
    return sorted(found, key=str), sorted(aside, key=lambda a: str(a.path))


def _not_a_file(path: Path, inside: Path) -> str:
    """Why `path` is not a regular file inside the scanned folder ("" when it is one)."""
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            target = path.resolve()
            mode = target.stat().st_mode
            if stat.S_ISDIR(mode):
                return "a link to a folder: not followed"
            if not target.is_relative_to(inside):
                return "a link to a file outside the scanned folder: not followed"
    except (OSError, RuntimeError) as err:
        return f"the file cannot be read ({getattr(err, 'strerror', None) or err})"
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "a folder that cannot be read"
    what = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"not a regular file: {what}"
