"""Uploaded files on disk: one temporary folder per browser session, safe names, safe unzipping.

Every name is reduced to plain parts (no absolute paths, no `..`, no hidden names), so nothing an
upload says can land outside its folder. The folder is removed by `close()`, when its owner is
garbage-collected, or at process exit.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import stat
import tempfile
import unicodedata
import weakref
import zipfile
from pathlib import Path, PurePosixPath

from pipeline.errors import TwoviewError

__all__ = [
    "MAX_UNZIPPED_BYTES",
    "MAX_ZIP_MEMBERS",
    "UploadError",
    "UploadFolder",
    "safe_name",
]

logger = logging.getLogger(__name__)

MAX_ZIP_MEMBERS = 20_000  # a study zip holds a few files; a folder of studies a few thousand
MAX_UNZIPPED_BYTES = 8 * 2**30  # refuse zip bombs before writing them out
LOOSE_STUDY = "upload"  # the study id of pictures uploaded on their own (no folder, no StudyInstanceUID)
_UNSAFE = re.compile(r"[^A-Za-z0-9._ ()+@=-]+")


class UploadError(TwoviewError):
    """An upload that cannot be stored: a damaged zip, a zip bomb, an unusable name."""


def safe_name(name: str) -> str:
    """One file name part: accents folded, separators and odd characters replaced, no leading dots."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", folded.replace("/", "_").replace("\\", "_")).strip(" .")
    return cleaned[:120] or "file"


def _safe_parts(member: str) -> tuple[str, ...]:
    """A zip member's path as safe parts: drive, root, `.`, `..` and hidden parts dropped."""
    parts = PurePosixPath(member.replace("\\", "/")).parts
    kept = [p for p in parts if p not in ("/", ".", "..") and not p.startswith(".") and not p.endswith(":")]
    return tuple(safe_name(p) for p in kept)


class UploadFolder:
    """A private temporary folder for one session's uploads; `add` stores a file or unpacks a zip."""

    def __init__(self, parent: str | Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="twoview-upload-", dir=parent))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)

    def add(self, name: str, data: bytes) -> list[Path]:
        """Store one uploaded file (a zip is unpacked into a folder of its name); the paths written."""
        if name.lower().endswith(".zip") or data[:4] == b"PK\x03\x04":
            return self._unzip(name, data)
        return [self._write(self._unique(self.root / safe_name(name)), data)]

    def close(self) -> None:
        """Remove the folder and everything in it."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _unzip(self, name: str, data: bytes) -> list[Path]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, OSError) as err:
            raise UploadError(f"{name}: not a readable zip file ({err})") from err
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir() and not _is_link(m)]
            _check_size(name, members)
            folder = self._unique(self.root / safe_name(Path(name).stem or "archive"))
            written = []
            for member in members:
                parts = _safe_parts(member.filename)
                if not parts:
                    continue
                target = self._unique(folder.joinpath(*parts))
                try:
                    written.append(self._write(target, archive.read(member)))
                except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as err:
                    raise UploadError(f"{name}: cannot unpack {member.filename!r} ({err})") from err
        return written

    def _write(self, target: Path, data: bytes) -> Path:
        if not target.resolve().is_relative_to(self.root.resolve()):
            raise UploadError(f"{target.name}: refused, the name points outside the upload folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    @staticmethod
    def _unique(path: Path) -> Path:
        """`path`, or `name-1.ext`, `name-2.ext`, ... when it is taken."""
        candidate, n = path, 0
        while candidate.exists():
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        return candidate


def _is_link(member: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(member.external_attr >> 16)


def _check_size(name: str, members: list[zipfile.ZipInfo]) -> None:
    if len(members) > MAX_ZIP_MEMBERS:
        raise UploadError(f"{name}: {len(members)} files; at most {MAX_ZIP_MEMBERS} are unpacked")
    total = sum(m.file_size for m in members)
    if total > MAX_UNZIPPED_BYTES:
        raise UploadError(
            f"{name}: unpacks to {total / 2**30:.1f} GiB; at most {MAX_UNZIPPED_BYTES / 2**30:.0f} GiB"
        )
