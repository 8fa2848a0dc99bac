"""Uploaded files on disk: one temporary folder per upload, safe names, zips unpacked as streams.

Every name is reduced to plain parts (no absolute paths, no `..`, no hidden names), so nothing an
upload says can land outside its folder. Files are copied and zips unpacked a chunk at a time with
a byte counter, so the per-file and per-upload limits hold while unpacking, whatever sizes a zip
declares, and memory stays flat. A refused zip leaves nothing behind. The folder is removed by
`close()`, when its owner is garbage-collected, or at process exit; the app also keeps every upload
folder of a browser session inside one session folder that goes when the session ends.
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
from typing import BinaryIO

from pipeline.errors import TwoviewError

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_PIXELS",
    "MAX_ZIP_MEMBERS",
    "UploadError",
    "UploadFolder",
    "safe_name",
]

logger = logging.getLogger(__name__)

MAX_ZIP_MEMBERS = 20_000  # a study zip holds a few files; a folder of studies a few thousand
MAX_FILE_BYTES = 256 * 2**20  # one unpacked file: an uncompressed 43 cm film at 0.05 mm is 150 MB
MAX_UPLOAD_BYTES = 2**30  # everything one upload unpacks to, together
MAX_UPLOAD_PIXELS = 150_000_000  # decoded pixels of all images of one upload (a 4300 px film is 18.5 M)
LOOSE_STUDY = "upload"  # the study id of pictures uploaded on their own (no folder, no StudyInstanceUID)
_CHUNK = 1 << 20
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
    """A private temporary folder for one upload; `add` stores a file or unpacks a zip, within the limits.

    `written` counts the bytes of every file stored so far, against `MAX_UPLOAD_BYTES`.
    """

    def __init__(self, parent: str | Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="twoview-upload-", dir=parent))
        self.written = 0
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.root), True)

    def add(self, name: str, data: bytes | BinaryIO) -> list[Path]:
        """Store one uploaded file (a zip is unpacked into a folder of its name); the paths written.

        `data` may be bytes or a seekable binary file (such as Streamlit's upload), read in chunks.
        """
        source: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data  # shares the bytes, no copy
        source.seek(0)
        head = source.read(4)
        source.seek(0)
        if name.lower().endswith(".zip") or head == b"PK\x03\x04":
            return self._unzip(name, source)
        target = self._unique(self.root / safe_name(name))
        before = self.written
        try:
            return [self._copy(target, source, name)]
        except BaseException:
            target.unlink(missing_ok=True)  # a refused file leaves nothing behind
            self.written = before
            raise

    def close(self) -> None:
        """Remove the folder and everything in it."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive or not self.root.is_dir()

    def _unzip(self, name: str, source: BinaryIO) -> list[Path]:
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise UploadError(f"{name}: not a readable zip file ({err})") from err
        folder = self._unique(self.root / safe_name(Path(name).stem or "archive"))
        before = self.written
        try:
            with archive:
                members = [m for m in archive.infolist() if not m.is_dir() and not _is_link(m)]
                self._check_declared(name, members)
                written = []
                for member in members:
                    parts = _safe_parts(member.filename)
                    if parts:
                        written.append(
                            self._extract(archive, member, self._unique(folder.joinpath(*parts)), name)
                        )
                return written
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # a refused zip leaves nothing behind
            self.written = before
            raise

    def _extract(self, archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, name: str) -> Path:
        try:
            with archive.open(member) as stream:
                return self._copy(target, stream, f"{name}: {member.filename!r}")
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            NotImplementedError,
            OSError,
            ValueError,
            EOFError,
        ) as err:
            raise UploadError(f"{name}: cannot unpack {member.filename!r} ({err})") from err

    def _copy(self, target: Path, stream: BinaryIO, what: str) -> Path:
        """Copy `stream` into `target` a chunk at a time, refusing as soon as a limit is passed."""
        if not target.resolve().is_relative_to(self.root.resolve()):
            raise UploadError(f"{target.name}: refused, the name points outside the upload folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with target.open("xb") as out:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                self.written += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise UploadError(
                        f"{what}: more than {_size(MAX_FILE_BYTES)}; files are refused beyond that"
                    )
                if self.written > MAX_UPLOAD_BYTES:
                    raise UploadError(
                        f"{what}: the upload unpacks to more than {_size(MAX_UPLOAD_BYTES)} in all; "
                        "upload fewer files at a time, or put big folders on the server for Batch"
                    )
                out.write(chunk)
        return target

    def _check_declared(self, name: str, members: list[zipfile.ZipInfo]) -> None:
        """Refuse at once what the zip's own directory shows to be too big (it may understate: `_copy` counts)."""
        if len(members) > MAX_ZIP_MEMBERS:
            raise UploadError(f"{name}: {len(members)} files; at most {MAX_ZIP_MEMBERS} are unpacked")
        biggest = max((m.file_size for m in members), default=0)
        if biggest > MAX_FILE_BYTES:
            raise UploadError(
                f"{name}: holds a file of {_size(biggest)}; files are refused beyond {_size(MAX_FILE_BYTES)}"
            )
        total = self.written + sum(m.file_size for m in members)
        if total > MAX_UPLOAD_BYTES:
            raise UploadError(
                f"{name}: unpacks to {_size(total)}; at most {_size(MAX_UPLOAD_BYTES)} per upload"
            )

    @staticmethod
    def _unique(path: Path) -> Path:
        """`path`, or `name-1.ext`, `name-2.ext`, ... when it is taken."""
        candidate, n = path, 0
        while candidate.exists():
            n += 1
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        return candidate


def _size(count: int) -> str:
    return f"{count / 2**30:,.1f} GiB" if count >= 2**30 else f"{count / 2**20:,.0f} MiB"


def _is_link(member: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(member.external_attr >> 16)
