"""Read one radiograph (DICOM by content, PNG or JPEG) into an `XrayImage`, or raise an `ImageError`.

This is the only module that touches pixel data. Every image leaves it in the project's one
intensity range: float32 in [0, 1], bright = dense, where 0 and 1 are the 0.5th and 99.5th
percentiles of the image after the Modality LUT and (by default) the VOI LUT or window, read at one
scale (`RANGE_SIDE`) whatever the resolution it is decoded at.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset, read_file_meta_info, read_partial
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.pixels.utils import get_expected_length, get_nr_frames
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

from pipeline.errors import (
    DimensionsError,
    EmptyImageError,
    ImageError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedPixelDataError,
    UnsupportedModalityError,
    UnsupportedSyntaxError,
)

__all__ = [
    "ImageValues",
    "XrayImage",
    "read_image",
    "read_values",
    "shrink",
    "read_header",
    "is_dicom",
    "XRAY_MODALITIES",
    "LOW_PERCENTILE",
    "HIGH_PERCENTILE",
    "RANGE_SIDE",
    "MIN_SIDE",
    "MAX_SIDE",
    "MAX_FRAME_BYTES",
]

logger = logging.getLogger(__name__)

LOW_PERCENTILE = 0.5  # the project's one intensity range: these percentiles map to 0 and 1
HIGH_PERCENTILE = 99.5
#: The percentiles are read from the image block-averaged to at least this many pixels on its longer side
#: (under twice it), at whatever resolution it was decoded: a film's darkest and brightest 0.5 % lie in few,
#: sharp pixels (markers, collimator edges), so a percentile read at another scale, or from every other
#: row, moved the demo model's probabilities on RG1 by 0.02. It is the model path's decoding size for
#: 224 px models (`pipeline.data.DECODE_OVERSAMPLING` x 224), so that path reads it off its own image.
RANGE_SIDE = 448
MIN_SIDE = 32  # smaller than this is an icon or a placeholder, not a radiograph
MAX_SIDE = 16384  # a 43 cm detector at 0.05 mm is 8600 px; twice that is surely not a chest film
MAX_FRAME_BYTES = 512 * 2**20  # declared size of the one frame we decode
MAX_FILE_BYTES = 2 * 2**30  # whole files are read into memory; refuse bigger ones up front
MAX_HEADER_READS = 100_000  # small reads (element headers and short values) one parse may make
MAX_INFLATED_BYTES = 2 * MAX_FRAME_BYTES  # a deflated data set may unpack to at most this
EXTRA_BYTES = 1 << 20  # bytes a file may hold beyond its header and twice its declared pixel data
XRAY_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
"""Projection radiography. OT (secondary capture, often a digitised film) and a missing Modality
are read too, with a warning; every other modality (CT, MR, US, NM, PT, MG, XA, ...) is refused."""

_MODALITY_NAMES = {
    "CT": "a CT scan",
    "MR": "an MRI scan",
    "US": "an ultrasound",
    "NM": "a nuclear medicine image",
    "PT": "a PET scan",
    "MG": "a mammogram",
    "XA": "an angiography (XA) image",
    "RF": "a fluoroscopy (RF) image",
    "SR": "a structured report",
    "PR": "a presentation state",
    "SC": "a secondary capture",
    "ES": "an endoscopy image",
    "IO": "an intra-oral dental image",
    "PX": "a panoramic dental image",
}
_NATIVE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # Pixel Data, Float and Double Float
_SMALL_READ = 16  # element headers are 4 to 12 bytes; pixel data and long values come in bigger reads
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
_PIXEL_DATA_TAG_BE = b"\x7f\xe0\x00\x10"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_SNIFF_BYTES = 64 * 1024  # how much of a preamble-less file is parsed to decide whether it is DICOM
_PERCENTILE_SAMPLES = 2**18  # `read_values` estimates its default window from about this many pixels
_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601 luma
_EMPTY = np.zeros((0, 0), dtype=np.float32)
_SCALED_SYNTAXES = {JPEG2000Lossless, JPEG2000, JPEGBaseline8Bit}  # decoders that can skip detail


@dataclass(frozen=True)
class XrayImage:
    """One decoded radiograph and the metadata the rest of the pipeline needs."""

    pixels: np.ndarray = field(repr=False)  # float32 [H, W] in [0, 1], bright = dense
    path: Path
    modality: str = ""  # "CR", "DX", ... ("" for PNG/JPEG)
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    patient_id: str = ""
    accession: str = ""
    study_date: str = ""
    body_part: str = ""
    view_position: str = ""
    patient_orientation: str = ""  # row then column direction, e.g. "L\\F"
    image_laterality: str = ""
    series_description: str = ""
    protocol_name: str = ""
    photometric: str = ""
    transfer_syntax: str = ""
    rows: int = 0
    columns: int = 0
    pixel_spacing: tuple[float, float] | None = None  # PixelSpacing, else ImagerPixelSpacing (mm)
    warnings: tuple[str, ...] = ()  # e.g. "RGB converted to grey", "multi-frame: first frame used"
    study_description: str = ""
    number_of_frames: int = 1
    view_code_meaning: str = ""  # View Code Sequence's CodeMeaning, e.g. "postero-anterior"
    device: str = ""  # Manufacturer and ManufacturerModelName, e.g. "twoview phantom" for our phantoms
    # `read_image(target_size=)` shrinks by this factor: pixel (i, j) stands for the full image's
    # rows i*r .. i*r+r-1 and columns j*r .. j*r+r-1 (the last ones for what is left); rows, columns
    # and pixel_spacing always describe the full image.
    reduction: int = 1

    @property
    def is_dicom(self) -> bool:
        """True when the image came from a DICOM file (PNG/JPEG have no transfer syntax)."""
        return bool(self.transfer_syntax)


def is_dicom(path: str | Path) -> bool:
    """True when the file is DICOM by content: 'DICM' at byte 128, or a preamble-less image dataset."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    return _looks_like_dicom(head)


def read_image(path: str | Path, *, apply_voi: bool = True, target_size: int | None = None) -> XrayImage:
    """Decode a DICOM, PNG or JPEG radiograph into float32 [0, 1] pixels plus metadata.

    `apply_voi=False` skips the file's VOI LUT / window, keeping the full modality range.
    `target_size` (the model path) lets the decoder shrink the image by whole factors while its longer
    side stays at least that many pixels; the viewer and Grad-CAM leave it None for full resolution.
    Raises an `ImageError` subclass (never anything else) for any file that cannot be used.
    """
    path = Path(path)
    kind = _sniff(path)
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size must be at least 1, got {target_size}")
    try:
        if kind == "dicom":
            return _read_dicom(path, apply_voi=apply_voi, target_size=target_size)
        return _read_picture(path, target_size=target_size)
    except ImageError:
        raise
    except MemoryError as exc:
        raise DimensionsError(path, "the image is too large to load into memory") from exc
    except Exception as exc:  # the boundary: pydicom, numpy and PIL errors become ImageErrors
        raise TruncatedPixelDataError(
            path, f"the image data is damaged or incomplete and cannot be decoded ({_describe(exc)})"
        ) from exc
    except BaseException as exc:  # a Rust decoder's panic (pyo3 PanicException) is not an Exception
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise TruncatedPixelDataError(
            path, f"the image data is damaged and its decoder failed ({_describe(exc)})"
        ) from exc


def read_header(path: str | Path) -> XrayImage:
    """Read only the metadata (no pixel data) for cheap grouping of big folders; `pixels` is empty.

    Refuses what the header alone shows to be unusable (not an image, wrong modality, bad size or
    syntax); problems inside the pixel data only show up in `read_image`.
    """
    path = Path(path)
    kind = _sniff(path)
    try:
        if kind == "dicom":
            ds = _parse(path, stop_before_pixels=True)
            notes: list[str] = []
            _check_header(path, ds, notes, header_only=True)
            return _metadata(ds, path, _EMPTY, notes)
        with Image.open(path) as img:
            _check_picture_size(path, img)
            return XrayImage(pixels=_EMPTY, path=path, rows=img.height, columns=img.width)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise DimensionsError(path, f"the image is too large to load ({_describe(exc)})") from exc
    except Exception as exc:
        raise NotAnImageError(path, f"the file header cannot be read ({_describe(exc)})") from exc


# --- deciding what a file is -------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """Return "dicom" or "picture", or raise NotAnImageError saying what the file is instead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # a named pipe must not block
    except FileNotFoundError as exc:
        raise NotAnImageError(path, "the file does not exist") from exc
    except IsADirectoryError as exc:
        raise NotAnImageError(path, "this is a folder, not an image file") from exc
    except OSError as exc:
        raise NotAnImageError(path, f"the file cannot be opened ({_describe(exc)})") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise NotAnImageError(path, "this is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise NotAnImageError(path, "not a regular file (a named pipe, socket or device)")
        size = info.st_size
        if size == 0:
            raise NotAnImageError(path, "the file is empty (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise DimensionsError(path, f"the file is {size / 2**30:.1f} GiB, more than the 2 GiB limit")
        head = os.read(fd, _SNIFF_BYTES)
    except OSError as exc:
        raise NotAnImageError(path, f"the file cannot be read ({_describe(exc)})") from exc
    finally:
        os.close(fd)
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return "picture"
    if _looks_like_dicom(head):
        return "dicom"
    raise NotAnImageError(path, "this is not a DICOM, PNG or JPEG image")


def _looks_like_dicom(head: bytes) -> bool:
    """'DICM' at 128, or a forced parse of the first bytes that finds Rows and Columns."""
    if head[128:132] == b"DICM":
        return True
    try:
        ds = pydicom.dcmread(io.BytesIO(head), force=True, stop_before_pixels=True)
        return "Rows" in ds and "Columns" in ds
    except Exception:  # any parse failure simply means "not DICOM"
        return False


# --- DICOM -------------------------------------------------------------------------------------


def _read_dicom(path: Path, *, apply_voi: bool, target_size: int | None = None) -> XrayImage:
    """Parse, check the header against the pixel data, decode the first frame (reduced if asked) and scale it."""
    ds = _parse(path, stop_before_pixels=False)
    notes: list[str] = []
    _check_header(path, ds, notes)
    _check_length(path, ds)
    if target_size is None:
        raw, reduction = _decode_first_frame(path, ds, notes), 1
    else:
        raw, reduction = _decode_reduced(path, ds, notes, target_size)
    pixels = _dicom_to_unit(path, raw, ds, apply_voi=apply_voi, notes=notes)
    image = _metadata(ds, path, pixels, notes)
    return replace(image, reduction=reduction) if reduction != 1 else image


def _parse(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """dcmread with force=True (preamble-less files), bounded; a missing transfer syntax is inferred.

    Bounded in time and memory whatever the file holds: a deflated data set may not unpack beyond
    `MAX_INFLATED_BYTES`; parsing gives up after `MAX_HEADER_READS` small reads (a run of empty
    elements, e.g. gigabytes of zeros, would otherwise be walked 8 bytes at a time); a file far larger
    than its header plus its declared pixel data is refused before the pixel data is read; and
    parsing stops at the first element after the pixel data. The header is parsed once: the pixel
    data is read on from where the header stopped.
    """
    try:
        inflated = _inflate(path)
        with _CappedReader(path, None if inflated is None else inflated[1]) as f:
            header = _read(f, path, _at_pixel_data)
            _check_file_size(path, header, pixels_at=f.tell(), size=f.size)
            ds = header if stop_before_pixels else _read(f, path, _after_pixel_data(), after=header)
    except ImageError:
        raise
    except Exception as exc:
        raise NotAnImageError(
            path, f"the DICOM header cannot be read; the file is damaged or incomplete ({_describe(exc)})"
        ) from exc
    if inflated is not None:
        ds.file_meta = inflated[0]
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds


def _read(
    f: _CappedReader,
    path: Path,
    stop_when: Callable[[int, object, int], bool],
    *,
    after: Dataset | None = None,
) -> Dataset:
    """One bounded pass of pydicom over the file: from its start, or `after` a header read up to here
    (its elements and the ones read now, as one data set).

    Small reads are counted by the reader, top-level elements by the stop condition (the one count
    that also sees the inside of a deflated data set, which pydicom unpacks into its own buffer).
    """
    f.reads_left = MAX_HEADER_READS
    elements = 0

    def counted(tag: int, vr: object, length: int) -> bool:
        nonlocal elements
        elements += 1
        return elements > MAX_HEADER_READS or stop_when(tag, vr, length)

    try:
        if after is None:
            ds = read_partial(f, counted, force=True)
        else:
            implicit, little = after.original_encoding
            rest = read_dataset(
                f, implicit, little, stop_when=counted, parent_encoding=after.original_character_set
            )
            after.update(rest)
            ds = after
    except Exception:
        if f.reads_left > 0 and elements <= MAX_HEADER_READS:
            raise
        ds = None
    if f.reads_left <= 0 or elements > MAX_HEADER_READS or ds is None:
        raise NotAnImageError(
            path,
            f"the DICOM data holds more than {MAX_HEADER_READS:,} elements (or a long run of empty ones); "
            "this is not a radiograph's header, so it is refused",
        )
    return ds


def _at_pixel_data(tag: int, vr: object, length: int) -> bool:
    return tag in _PIXEL_TAGS


def _after_pixel_data() -> Callable[[int, object, int], bool]:
    """A stop condition for pydicom: read the pixel data, then stop at the next element."""
    seen = False

    def stop(tag: int, vr: object, length: int) -> bool:
        nonlocal seen
        if tag in _PIXEL_TAGS:
            seen = True
            return False
        return seen

    return stop


def _check_file_size(path: Path, header: Dataset, *, pixels_at: int, size: int) -> None:
    """Refuse a file far larger than its header plus the pixel data the header declares."""
    declared = _declared_pixel_bytes(header)
    if declared is None:
        return  # no usable size in the header: the header checks refuse it with the reason
    allowed = pixels_at + 2 * declared + EXTRA_BYTES
    if size > allowed:
        raise DimensionsError(
            path,
            f"the file is {size:,} bytes, but its header ({pixels_at:,} bytes) and the image it declares "
            f"({declared:,} bytes) need far less; the rest is not image data (a damaged or forged file)",
        )


def _declared_pixel_bytes(ds: Dataset) -> int | None:
    """Bytes of native pixel data the header declares (all frames), or None when it does not say."""
    rows, cols, bits = _int(ds.get("Rows")), _int(ds.get("Columns")), _int(ds.get("BitsAllocated"))
    spp = _int(ds.get("SamplesPerPixel", 1)) or 1
    frames = _int(ds.get("NumberOfFrames", 1)) or 1
    if rows is None or cols is None or bits is None or min(rows, cols, bits, spp, frames) <= 0:
        return None
    return -(-rows * cols * spp * bits * frames // 8)


def _inflate(path: Path) -> tuple[pydicom.dataset.FileMetaDataset, bytes] | None:
    """A deflated data set's File Meta and unpacked bytes, refused beyond `MAX_INFLATED_BYTES`.

    pydicom would unpack it whole, unbounded, and then parse it from its own buffer where the read
    count of `_CappedReader` cannot see; unpacked here, it is parsed like any other file.
    """
    try:
        meta = read_file_meta_info(path)
    except Exception:  # no readable file meta: not deflated as far as pydicom is concerned
        return None
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return None
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    total = 0
    with path.open("rb") as f:
        pydicom.filereader.read_preamble(f, True)
        pydicom.filereader._read_file_meta_info(f)  # noqa: SLF001 (positions f after the File Meta)
        while not inflate.eof and (chunk := f.read(1 << 20)):
            while chunk:
                part = inflate.decompress(chunk, 1 << 20)
                total += len(part)
                if total > MAX_INFLATED_BYTES:
                    raise DimensionsError(
                        path,
                        f"the deflated data set unpacks to more than {MAX_INFLATED_BYTES / 2**30:.0f} GiB; "
                        "refused (a compression bomb or a damaged file)",
                    )
                parts.append(part)
                chunk = inflate.unconsumed_tail
    return meta, b"".join(parts)


class _CappedReader(io.BufferedReader):
    """A file (or unpacked bytes) whose reads pydicom cannot turn into a hang or a huge allocation.

    read(n) asks for at most the bytes left, so a damaged length cannot make pydicom allocate it;
    after `reads_left` small reads (element headers) the data reads as ended, so a run of millions
    of empty elements stops at once; `_read` then refuses the file.
    """

    def __init__(self, path: Path, data: bytes | None = None) -> None:
        if data is None:
            raw: io.RawIOBase | io.BytesIO = io.FileIO(str(path), "rb")
        else:
            raw = io.BytesIO(data)
            raw.name = str(path)  # pydicom names the file in its messages
        super().__init__(raw)
        self.size = path.stat().st_size if data is None else len(data)
        self.reads_left = MAX_HEADER_READS

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and 0 <= size <= _SMALL_READ:
            self.reads_left -= 1
            if self.reads_left <= 0:
                return b""
        if size is not None and size > 0:
            size = min(size, max(0, self.size - self.tell()))
        return super().read(size)


def _check_header(path: Path, ds: Dataset, notes: list[str], *, header_only: bool = False) -> None:
    """Every check the header alone allows, most telling first (Pixel Data only if it was read)."""
    _check_modality(path, ds, notes)
    if not header_only and "PixelData" not in ds:
        _raise_missing_pixels(path)
    _check_syntax(path, ds)
    _check_dimensions(path, ds)


def _raise_missing_pixels(path: Path) -> None:
    """No Pixel Data parsed: truncated if the file holds the Pixel Data tag, else no image at all."""
    if _contains(path, (_PIXEL_DATA_TAG_LE, _PIXEL_DATA_TAG_BE)):
        raise TruncatedPixelDataError(
            path,
            "the pixel data is incomplete (the file ends inside it); it was probably cut short while copying",
        )
    raise NoPixelDataError(
        path,
        "the DICOM file has no image (Pixel Data) in it; it may be a report, a header-only file, "
        "or a file cut short before the image",
    )


def _contains(path: Path, needles: tuple[bytes, ...], chunk: int = 1 << 20) -> bool:
    """Whether any of `needles` occurs in the file, read a chunk at a time (never the whole file at once)."""
    overlap = max(map(len, needles)) - 1
    tail = b""
    with path.open("rb") as f:
        while block := f.read(chunk):
            window = tail + block
            if any(needle in window for needle in needles):
                return True
            tail = window[-overlap:]
    return False


def _check_modality(path: Path, ds: Dataset, notes: list[str]) -> None:
    """Accept projection radiographs; warn for OT or a missing Modality; refuse the rest."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in XRAY_MODALITIES:
        return
    if modality == "":
        notes.append("no Modality tag; assumed to be a radiograph")
    elif modality == "OT":
        notes.append("Modality is OT (other); assumed to be a digitised radiograph")
    else:
        what = _MODALITY_NAMES.get(modality, f"a {modality} image")
        raise UnsupportedModalityError(
            path, f"this is {what} (Modality {modality}); twoview reads only chest radiographs (CR, DX)"
        )


def _check_syntax(path: Path, ds: Dataset) -> None:
    """Refuse a transfer syntax that no installed pixel decoder handles, naming it."""
    uid = UID(str(ds.file_meta.TransferSyntaxUID))
    name = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise UnsupportedSyntaxError(
            path, f"the image is stored with transfer syntax {name}, which twoview cannot decode"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise UnsupportedSyntaxError(
            path, f"the image is stored with transfer syntax {name}; decoding it needs {missing}"
        )


def _check_dimensions(path: Path, ds: Dataset) -> None:
    """Check Rows x Columns x samples x bits (x frames) against sane bounds before any decoding."""
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    spp, bits = _int(ds.get("SamplesPerPixel", 1)), _int(ds.get("BitsAllocated"))
    frames = _int(ds.get("NumberOfFrames", 1)) or 1
    if rows is None or cols is None:
        raise DimensionsError(path, "the DICOM header does not give the image size (Rows, Columns)")
    if min(rows, cols) < MIN_SIDE:
        raise DimensionsError(
            path, f"the image is {cols}x{rows} pixels; a radiograph needs at least {MIN_SIDE} on each side"
        )
    if max(rows, cols) > MAX_SIDE:
        raise DimensionsError(
            path, f"the header declares {cols}x{rows} pixels; more than {MAX_SIDE} on a side is refused"
        )
    if bits not in (1, 8, 16, 32) or spp not in (1, 3):
        raise DimensionsError(
            path, f"Bits Allocated {bits} / Samples per Pixel {spp} is not a valid greyscale or RGB image"
        )
    frame_bytes = rows * cols * spp * max(bits, 8) // 8
    if frame_bytes > MAX_FRAME_BYTES or frames < 0 or frames * frame_bytes > 4 * MAX_FILE_BYTES:
        raise DimensionsError(
            path, f"the header declares {frames} frame(s) of {cols}x{rows}x{spp} at {bits} bits; too big"
        )


def _check_length(path: Path, ds: Dataset) -> None:
    """Native pixel data must be as long as the header declares (encapsulated data is checked by decoding)."""
    if (
        ds.file_meta.TransferSyntaxUID not in _NATIVE_SYNTAXES
        and not ds.file_meta.TransferSyntaxUID.is_deflated
    ):
        return
    expected = get_expected_length(ds, "bytes")
    actual = len(ds.PixelData)
    if actual < expected:
        raise TruncatedPixelDataError(
            path,
            f"the pixel data is incomplete: the header declares {expected:,} bytes but the file holds "
            f"{actual:,}; the file was probably cut short while copying",
        )


def _decode_first_frame(path: Path, ds: Dataset, notes: list[str]) -> np.ndarray:
    """Decode frame 0 only (YBR comes back as RGB; a palette is expanded); warn for multi-frame."""
    frames = get_nr_frames(ds, warn=False)
    if frames > 1:
        notes.append(f"multi-frame ({frames} frames): first frame used")
    try:
        arr = pixel_array(ds, index=0)
    except Exception as exc:
        raise TruncatedPixelDataError(
            path, f"the pixel data is damaged or incomplete and cannot be decoded ({_describe(exc)})"
        ) from exc
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        notes.append(f"{ds.get('PhotometricInterpretation', 'colour')} converted to grey")
        arr = arr @ _GREY_WEIGHTS
    return arr


def _dicom_to_unit(
    path: Path, raw: np.ndarray, ds: Dataset, *, apply_voi: bool, notes: list[str]
) -> np.ndarray:
    """Modality LUT, then VOI, MONOCHROME1 inversion, padding mask and robust scaling."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    grey = photometric in ("MONOCHROME1", "MONOCHROME2")

    def to_display(values: np.ndarray) -> np.ndarray:
        if not grey:
            return values
        values = apply_modality_lut(values, ds)
        if apply_voi:
            values = _apply_voi(values, ds, notes)
        return values

    padding = _padding_range(ds) if grey else None
    return _to_unit(path, raw, to_display, invert=photometric == "MONOCHROME1", padding=padding)


def _apply_voi(values: np.ndarray, ds: Dataset, notes: list[str]) -> np.ndarray:
    """pydicom's VOI LUT or window on modality values; an unusable VOI is skipped with a warning."""
    if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)  # integral modality output: keep the VOI LUT on integers
    try:
        return apply_voi_lut(values, ds, index=0)
    except Exception as exc:
        notes.append(f"VOI LUT / window ignored: {_describe(exc)}")
        return values


def _padding_range(ds: Dataset) -> tuple[int, int] | None:
    """The stored values marked as padding (Pixel Padding Value [.. Range Limit]), if any."""
    value = _int(ds.get("PixelPaddingValue"))
    if value is None:
        return None
    limit = _int(ds.get("PixelPaddingRangeLimit"))
    limit = value if limit is None else limit
    return min(value, limit), max(value, limit)


# --- reduced resolution for the model path -----------------------------------------------------


def _decode_reduced(path: Path, ds: Dataset, notes: list[str], target: int) -> tuple[np.ndarray, int]:
    """Frame 0 shrunk by a whole factor while its longer side stays >= `target`, and that factor.

    JPEG 2000 is decoded at a lower resolution level and JPEG baseline through libjpeg's scaled
    decode; whatever factor is left (all of it for other syntaxes) is a block average of the stored
    integers, before any LUT, so the LUTs and percentiles then run on the small image.
    """
    rows, cols = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    wanted = max(rows, cols) // target
    if wanted < 2:
        return _decode_first_frame(path, ds, notes), 1
    scaled = _scaled_decode(ds, wanted)
    raw, done = scaled if scaled is not None else (_native_view(ds), 1)
    bits = _int(ds.get("BitsStored")) if scaled is None and raw is not None else None  # high bits clear
    if raw is None:
        raw = _decode_first_frame(path, ds, notes)  # warns for multi-frame itself
    elif (frames := get_nr_frames(ds, warn=False)) > 1:
        notes.append(f"multi-frame ({frames} frames): first frame used")
    block = wanted // done
    return _block_mean(raw, block, _padding_range(ds), bits=bits), done * block


def _scaled_decode(ds: Dataset, factor: int) -> tuple[np.ndarray, int] | None:
    """Frame 0 decoded smaller by up to `factor` where the codec can (greyscale J2K, 8-bit JPEG), else None.

    Any failure here also returns None: the full decoder then runs and reports the problem.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if syntax not in _SCALED_SYNTAXES or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=get_nr_frames(ds, warn=False))
        if syntax == JPEGBaseline8Bit:
            return _jpeg_draft(frame, factor) if _int(ds.get("BitsStored")) == 8 else None
        return _j2k_reduced(frame, factor, signed=_int(ds.get("PixelRepresentation")) == 1)
    except Exception:  # a damaged stream: the full decode will say why
        return None


def _native_view(ds: Dataset) -> np.ndarray | None:
    """Frame 0 of uncompressed unsigned greyscale as a view on the file's bytes (no copy), else None.

    Bits above Bits Stored are cleared (a copy) only when some pixel has them set.
    """
    if (
        ds.file_meta.TransferSyntaxUID not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        or _int(ds.get("SamplesPerPixel", 1)) != 1
        or _int(ds.get("PixelRepresentation")) != 0
        or _int(ds.get("BitsAllocated")) not in (8, 16)
        or str(ds.get("PhotometricInterpretation", "")).strip().upper() not in ("MONOCHROME1", "MONOCHROME2")
    ):
        return None
    arr = pixel_array(ds, index=0, view_only=True, correct_unused_bits=False)
    stored = _int(ds.get("BitsStored")) or 8 * arr.dtype.itemsize
    if stored < 8 * arr.dtype.itemsize and int(arr.max()) >> stored:
        arr = arr & np.array((1 << stored) - 1, dtype=arr.dtype)
    return arr


def _jpeg_draft(data: bytes, factor: int) -> tuple[np.ndarray, int] | None:
    """An 8-bit greyscale JPEG decoded by libjpeg at 1/2, 1/4 or 1/8 scale (at most 1/`factor`)."""
    with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
        if img.mode != "L":
            return None
        scale = _draft(img, factor)
        return np.asarray(img), scale


def _draft(img: Image.Image, factor: int) -> int:
    """Ask a JPEG for libjpeg's scaled decode (1/2, 1/4 or 1/8, at most 1/`factor`); the scale it gives.

    Pillow picks the largest power of two at most `min(w // w', h // h')`; asking for (w // s, h // s)
    makes that exactly s.
    """
    width, height = img.size
    scale = 1 << (min(factor, 8, width, height).bit_length() - 1)
    if scale > 1:
        img.draft(img.mode, (width // scale, height // scale))
    return scale if img.size == (-(-width // scale), -(-height // scale)) else 1


def _j2k_reduced(data: bytes, factor: int, *, signed: bool) -> tuple[np.ndarray, int] | None:
    """A greyscale JPEG 2000 codestream decoded by openjpeg (in Pillow) with resolution levels dropped.

    Dropping r levels gives the wavelet's low-pass image, 2**r times smaller per side (rounded up),
    without decoding the detail bands at all. Returns None for what this path does not handle.
    """
    header = _j2k_header(data)
    if header is None or header.components != 1 or header.precision > 16 or header.signed != signed:
        return None
    if header.x0 or header.y0:
        return None  # an image offset shifts the reduced grid; rare enough to decode in full
    levels = min(header.levels, factor.bit_length() - 1)  # 2**levels <= factor
    if levels == 0:
        return None
    img = Image.open(io.BytesIO(data), formats=("JPEG2000",))
    # Pillow's `reduce` rounds the reduced size to nearest where openjpeg rounds up, and then fails
    # on sizes that differ; so we set the size and the decoder's reduce argument ourselves.
    size = (-(-header.width >> levels), -(-header.height >> levels))
    tile = img.tile[0]
    codec, _, layers, *rest = tile.args
    img._size = size
    img.tile = [ImageFile._Tile(tile.codec_name, (0, 0, *size), tile.offset, (codec, levels, layers, *rest))]
    with img:
        arr = np.array(img)
    # Pillow widens N-bit samples to 8 or 16 bits (and offsets signed ones); undo both, as pydicom does.
    bits = 8 * arr.dtype.itemsize
    if header.precision < bits:
        np.right_shift(arr, bits - header.precision, out=arr)
    if signed:
        arr = (arr.astype(np.int32) - (1 << (header.precision - 1))).astype(f"i{arr.dtype.itemsize}")
    return arr, 1 << levels


@dataclass(frozen=True)
class _J2KHeader:
    width: int
    height: int
    x0: int
    y0: int
    components: int
    precision: int
    signed: bool
    levels: int  # wavelet decomposition levels of component 0 (from COD, or a COC for it)


def _j2k_header(data: bytes) -> _J2KHeader | None:
    """The SIZ and COD/COC facts of a JPEG 2000 codestream's main header, or None if it is not one."""
    if not data.startswith(b"\xff\x4f\xff\x51"):
        return None
    size = levels = None
    at = 2
    while at + 4 <= len(data):
        marker, length = (
            int.from_bytes(data[at : at + 2], "big"),
            int.from_bytes(data[at + 2 : at + 4], "big"),
        )
        body = data[at + 4 : at + 2 + length]
        if marker == 0xFF51 and len(body) >= 39:
            width, height, x0, y0 = (int.from_bytes(body[2 + 4 * i : 6 + 4 * i], "big") for i in range(4))
            components, ssiz = int.from_bytes(body[34:36], "big"), body[36]
            size = (width - x0, height - y0, x0, y0, components, (ssiz & 0x7F) + 1, bool(ssiz & 0x80))
        elif marker == 0xFF52 and len(body) >= 6 and levels is None:
            levels = body[5]
        elif marker == 0xFF53 and size is not None and len(body) >= 3 + (size[4] > 256):
            wide = size[4] > 256
            if int.from_bytes(body[: 1 + wide], "big") == 0:
                levels = body[2 + wide]  # a COC for component 0 overrides the COD
        elif marker == 0xFF90 or length < 2:
            break
        at += 2 + length
    if size is None or levels is None:
        return None
    return _J2KHeader(*size, levels=levels)


def _block_mean(
    arr: np.ndarray, factor: int, padding: tuple[int, int] | None = None, *, bits: int | None = None
) -> np.ndarray:
    """`arr` shrunk `factor` times per side (rounded up) by averaging blocks, in its own dtype.

    Integer sums run in an integer type wide enough for them, one strided pass per row and column
    offset, and are rounded to the nearest integer; the last row and column of blocks average the
    pixels they have. With `padding`, blocks mostly of padding stay padding and the others average
    their other pixels. `bits`: unsigned values are known to stay below 2**bits (Bits Stored), so a
    12-bit film's 4 x 4 sums fit in 16 bits (its block sums then take half the time).
    """
    if factor <= 1:
        return arr
    pad = None
    if padding is not None and arr.dtype.kind in "ui":
        mask = (arr >= padding[0]) & (arr <= padding[1])
        if mask.any():
            pad = _block_sum(mask.view(np.uint8), factor, np.uint32).astype(np.int64)
            arr = np.where(mask, np.zeros((), arr.dtype), arr)
    rows: type | None = None
    if arr.dtype.kind == "f":
        wide: type = np.float64
    elif arr.dtype.kind == "u":
        top = (1 << (bits if bits and bits < 8 * arr.dtype.itemsize else 8 * arr.dtype.itemsize)) - 1
        rows = _accumulator(factor * top)
        wide = _accumulator(factor * factor * top + factor * factor // 2)  # and the rounding's half
    else:
        wide = np.int64
    sums = _block_sum(arr, factor, wide, rows)
    if pad is None and arr.dtype.kind != "f":
        return _rounded_mean(sums, factor, arr.shape, arr.dtype)
    sizes = np.outer(_block_sizes(arr.shape[0], factor), _block_sizes(arr.shape[1], factor))
    counts = sizes if pad is None else np.maximum(sizes - pad, 1)
    counts = counts.astype(wide).reshape(counts.shape + (1,) * (arr.ndim - 2))
    if arr.dtype.kind == "f":
        out = (sums / counts).astype(arr.dtype)
    else:
        out = ((sums + counts // 2) // counts).astype(arr.dtype)  # rounded to nearest
    if pad is not None:
        out[pad * 2 > sizes] = padding[0]
    return out


def _rounded_mean(sums: np.ndarray, factor: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Block sums to rounded means: one shift (or division) for the full blocks, then the edge blocks."""
    area = factor * factor
    out = sums + area // 2
    if area & (area - 1) == 0:
        out >>= area.bit_length() - 1
    else:
        out //= area
    row_sizes, col_sizes = _block_sizes(shape[0], factor), _block_sizes(shape[1], factor)
    if row_sizes[-1] != factor:
        counts = (row_sizes[-1] * col_sizes).astype(sums.dtype)
        out[-1] = (sums[-1] + counts // 2) // counts
    if col_sizes[-1] != factor:
        counts = (row_sizes * col_sizes[-1]).astype(sums.dtype)
        out[:, -1] = (sums[:, -1] + counts // 2) // counts
    return out.astype(dtype)


#: Rows of blocks summed per pass: the band's wide partial sums stay in the CPU cache (a 2k film: 20 % faster).
_BAND_BLOCKS = 64


def _accumulator(limit: int) -> type:
    """The narrowest unsigned integer type that holds `limit`."""
    return next(t for t in (np.uint16, np.uint32, np.uint64) if limit <= np.iinfo(t).max)


def _block_sum(arr: np.ndarray, factor: int, wide: type, rows: type | None = None) -> np.ndarray:
    """Sum of each `factor` x `factor` block of `arr` (partial blocks at the far edges), as `wide`;
    the sums over rows (`factor` values each) run in `rows` (default `wide`)."""
    rows, step = rows or wide, _BAND_BLOCKS * factor
    if arr.shape[0] <= step:
        return _band_sum(arr, factor, wide, rows)
    out = np.empty((-(-arr.shape[0] // factor), -(-arr.shape[1] // factor), *arr.shape[2:]), dtype=wide)
    for top in range(0, arr.shape[0], step):
        out[top // factor : (top + step) // factor] = _band_sum(arr[top : top + step], factor, wide, rows)
    return out


def _band_sum(arr: np.ndarray, factor: int, wide: type, rows: type) -> np.ndarray:
    """`_block_sum` of one band of rows: one strided pass per row offset, then per column offset."""
    by_rows = arr[0::factor].astype(rows)
    for i in range(1, min(factor, arr.shape[0])):
        part = arr[i::factor]
        by_rows[: len(part)] += part
    out = by_rows[:, 0::factor].astype(wide)
    for j in range(1, min(factor, arr.shape[1])):
        part = by_rows[:, j::factor]
        out[:, : part.shape[1]] += part
    return out


def _block_sizes(n: int, factor: int) -> np.ndarray:
    """Pixels per block along a side of `n`: `factor` each, the last block what is left."""
    sizes = np.full(-(-n // factor), factor, dtype=np.int64)
    sizes[-1] = n - factor * (len(sizes) - 1)
    return sizes


# --- intensity scaling -------------------------------------------------------------------------


def _to_unit(
    path: Path,
    raw: np.ndarray,
    to_display: Callable[[np.ndarray], np.ndarray],
    *,
    invert: bool,
    padding: tuple[int, int] | None,
) -> np.ndarray:
    """Map stored values to float32 [0, 1]: through a per-value table for 8/16-bit, else directly.

    For integer data the LUT functions run once per possible value, not per pixel, so a 2000x2000
    image costs one histogram and one table lookup and no float64 copy.
    """
    if raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2:
        return _to_unit_by_table(path, raw, to_display, invert=invert, padding=padding)
    return _to_unit_direct(path, raw, to_display, invert=invert, padding=padding)


def _to_unit_by_table(
    path: Path,
    raw: np.ndarray,
    to_display: Callable[[np.ndarray], np.ndarray],
    *,
    invert: bool,
    padding: tuple[int, int] | None,
) -> np.ndarray:
    """Integer path: histogram of stored values, display value per stored value, one gather."""
    if raw.dtype.kind == "i":
        unsigned = raw.dtype.str.replace("i", "u")
        index = raw.view(unsigned)
        stored = np.arange(2 ** (8 * raw.dtype.itemsize), dtype=unsigned).view(raw.dtype).astype(np.int64)
    else:
        index = raw
        stored = np.arange(int(raw.max()) + 1, dtype=np.int64)
    counts = np.bincount(_at_range_scale(raw, padding).view(index.dtype).ravel(), minlength=stored.size)
    pad = np.zeros(stored.size, dtype=bool)
    if padding is not None:
        pad = (stored >= padding[0]) & (stored <= padding[1])
        counts[pad] = 0
    display = np.asarray(to_display(stored), dtype=np.float64)
    lo, hi = _robust_range(path, display, counts)
    table = np.clip((display - lo) / (hi - lo), 0.0, 1.0)
    if invert:
        table = 1.0 - table
    table[pad] = 0.0
    return np.take(table.astype(np.float32), index)  # as table[index], without fancy indexing's overhead (2x)


def _to_unit_direct(
    path: Path,
    raw: np.ndarray,
    to_display: Callable[[np.ndarray], np.ndarray],
    *,
    invert: bool,
    padding: tuple[int, int] | None,
) -> np.ndarray:
    """Float or 32-bit path (colour converted to grey, rare deep data): scale the pixels in place."""
    pad = None if padding is None else (raw >= padding[0]) & (raw <= padding[1])
    values = np.asarray(to_display(raw), dtype=np.float32)
    if values is raw or not values.flags.writeable:
        values = values.copy()
    # Padding as NaN: blocks holding any are left out of the range.
    sample = values if pad is None else np.where(pad, np.float32(np.nan), values)
    lo, hi = _robust_range(path, _at_range_scale(sample).ravel(), None)
    values -= lo
    values *= 1.0 / (hi - lo)
    np.clip(values, 0.0, 1.0, out=values)
    if invert:
        np.subtract(1.0, values, out=values)
    if pad is not None:
        values[pad] = 0.0
    return values


def _at_range_scale(arr: np.ndarray, padding: tuple[int, int] | None = None) -> np.ndarray:
    """`arr` block-averaged to the scale its intensity range is read at (see `RANGE_SIDE`)."""
    return _block_mean(arr, max(arr.shape) // RANGE_SIDE, padding)


def _robust_range(path: Path, values: np.ndarray, counts: np.ndarray | None) -> tuple[float, float]:
    """The LOW/HIGH percentiles of `values` (weighted by `counts`), symmetric under negation.

    Low is the smallest value with at least q of the pixels at or below it, high the largest with
    at least q at or above it, so MONOCHROME1 and its MONOCHROME2 twin scale identically.
    """
    if counts is None:  # every value once: a plain sort, where the weighted path keeps pairs together
        values = np.sort(values[np.isfinite(values)])
        counts = np.ones(values.size, dtype=np.int64)
    else:
        keep = (counts > 0) & np.isfinite(values)
        values, counts = values[keep], counts[keep]
    if values.size == 0 or values.min() == values.max():
        raise EmptyImageError(path, "every pixel has the same value; the image is blank")
    if not (values[1:] >= values[:-1]).all():  # LUTs and windows are usually monotonic: no sort needed
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
    total = counts.sum()
    below = np.cumsum(counts)
    above = np.cumsum(counts[::-1])[::-1]
    lo = values[np.searchsorted(below, total * LOW_PERCENTILE / 100, side="left")]
    hi = values[np.nonzero(above >= total * (100 - HIGH_PERCENTILE) / 100)[0][-1]]
    if hi <= lo:
        lo, hi = values[0], values[-1]
    return float(lo), float(hi)


# --- PNG and JPEG ------------------------------------------------------------------------------


def _read_picture(path: Path, *, target_size: int | None = None) -> XrayImage:
    """PNG/JPEG via Pillow: 8/16-bit grey kept, colour converted to grey, EXIF rotation applied.

    With `target_size`, a JPEG is decoded by libjpeg at a reduced scale and the rest block-averaged.
    """
    notes: list[str] = []
    try:
        with Image.open(path) as img:
            _check_picture_size(path, img)
            if getattr(img, "n_frames", 1) > 1:
                notes.append(f"multi-frame ({img.n_frames} frames): first frame used")
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotation by a quarter turn
                width, height = height, width
            wanted = max(width, height) // target_size if target_size else 1
            done = _draft(img, wanted) if wanted >= 2 and img.format == "JPEG" else 1
            arr = _picture_array(img, notes)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise DimensionsError(path, f"the image is too large to load ({_describe(exc)})") from exc
    except UnidentifiedImageError as exc:
        raise NotAnImageError(path, "this is not a readable PNG or JPEG image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise TruncatedPixelDataError(
            path, f"the image data is damaged or incomplete ({_describe(exc)})"
        ) from exc
    if min(width, height) < MIN_SIDE:
        raise DimensionsError(
            path, f"the image is {width}x{height} pixels; a radiograph needs at least {MIN_SIDE}"
        )
    arr = _block_mean(arr, wanted // done)
    pixels = _to_unit(path, arr, lambda v: v, invert=False, padding=None)
    reduction = done * max(1, wanted // done)
    return _finish(
        XrayImage(pixels=pixels, path=path, rows=height, columns=width, reduction=reduction), notes
    )


def _check_picture_size(path: Path, img: Image.Image) -> None:
    """Refuse out-of-range sizes from the PNG/JPEG header, before decoding."""
    width, height = img.size
    if min(width, height) < MIN_SIDE:
        raise DimensionsError(
            path, f"the image is {width}x{height} pixels; a radiograph needs at least {MIN_SIDE} on each side"
        )
    if max(width, height) > MAX_SIDE:
        raise DimensionsError(path, f"the image is {width}x{height} pixels; more than {MAX_SIDE} on a side")


def _picture_array(img: Image.Image, notes: list[str]) -> np.ndarray:
    """A 2-D integer (or, for "F" pictures, float) array of grey levels from any Pillow mode."""
    rotated = ImageOps.exif_transpose(img)
    if rotated.size != img.size or rotated.getexif().get(0x0112, 1) != img.getexif().get(0x0112, 1):
        notes.append("rotated upright using the EXIF orientation")
    img = rotated
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16, copy=False)
    if img.mode in ("L", "I", "F"):
        return np.asarray(img)
    if img.mode in ("1", "LA", "La"):
        return np.asarray(img.convert("L"))
    if img.mode in ("P", "PA") and not _palette_is_grey(img):
        notes.append("palette colour converted to grey")
    elif img.mode not in ("P", "PA"):
        notes.append(f"{'RGB' if img.mode.startswith('RGB') else img.mode} converted to grey")
    # Pillow's luma (ITU-R BT.601, rounded to 8 bits): integer grey levels as an "L" picture has, so colour
    # exports take the same per-value table and integer block means (and the same range) at every scale.
    return np.asarray(img.convert("RGB").convert("L"))


def _palette_is_grey(img: Image.Image) -> bool:
    """True when every palette entry has R = G = B."""
    palette = np.asarray(img.getpalette() or [], dtype=np.int32).reshape(-1, 3)
    return bool(np.all(palette == palette[:, :1]))


# --- metadata ----------------------------------------------------------------------------------


def _metadata(ds: Dataset, path: Path, pixels: np.ndarray, notes: list[str]) -> XrayImage:
    """Build the XrayImage from the dataset's tags (missing or malformed tags become "")."""
    if not _text(ds, "StudyInstanceUID"):
        notes.append("no Study Instance UID; the study cannot be grouped by it")
    image = XrayImage(
        pixels=pixels,
        path=path,
        modality=_text(ds, "Modality").upper(),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        accession=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition").upper(),
        patient_orientation=_text(ds, "PatientOrientation").upper(),
        image_laterality=_text(ds, "ImageLaterality").upper(),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
        rows=_int(ds.get("Rows")) or 0,
        columns=_int(ds.get("Columns")) or 0,
        pixel_spacing=_spacing(ds),
        study_description=_text(ds, "StudyDescription"),
        number_of_frames=max(_int(ds.get("NumberOfFrames", 1)) or 1, 1),
        view_code_meaning=_view_code_meaning(ds),
        device=" ".join(filter(None, (_text(ds, "Manufacturer"), _text(ds, "ManufacturerModelName")))),
    )
    return _finish(image, notes)


def _finish(image: XrayImage, notes: list[str]) -> XrayImage:
    """Attach the warnings to the image and log each one once."""
    for note in notes:
        logger.warning("%s: %s", image.path, note)
    return replace(image, warnings=tuple(notes)) if notes else image


def _text(ds: Dataset, keyword: str) -> str:
    """A tag's value as a stripped string; multi-valued tags joined with a backslash."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value reads as missing rather than failing the whole file
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _int(value: object) -> int | None:
    """An integer from a tag value (int, numeric string, or a one-item list), else None."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _view_code_meaning(ds: Dataset) -> str:
    """The first View Code Sequence item's Code Meaning, or ""."""
    try:
        items = ds.get("ViewCodeSequence") or []
        return str(items[0].get("CodeMeaning", "")).strip() if len(items) else ""
    except Exception:  # a malformed sequence is treated as absent
        return ""


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is not None and len(value) == 2 and float(value[0]) > 0 and float(value[1]) > 0:
                return float(value[0]), float(value[1])
        except Exception:  # a malformed spacing is treated as absent
            continue
    return None


def _describe(exc: BaseException) -> str:
    """A short one-line description of a library exception for a user-facing message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --- a viewer's values -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageValues:
    """An image's own grey values for a viewer (window/level), not the [0, 1] model range.

    DICOM: modality values (after the Modality LUT, before any VOI); PNG/JPEG: the stored grey levels.
    """

    values: np.ndarray = field(repr=False)  # float32 [H, W]
    path: Path
    centre: float  # the file's first window, else the middle of the 0.5-99.5 percentile range
    width: float
    window_from: str  # where centre and width came from, in words
    monochrome1: bool = False  # high values are dark: shown inverted by default


def read_values(path: str | Path, max_side: int | None = None) -> ImageValues:
    """Decode a radiograph's first frame into its own grey values, shrunk like `shrink` to `max_side`.

    Raises an `ImageError` for any file that cannot be used (the same checks as `read_image`).
    """
    path = Path(path)
    try:
        if _sniff(path) == "dicom":
            ds = _parse(path, stop_before_pixels=False)
            notes: list[str] = []
            _check_header(path, ds, notes)
            _check_length(path, ds)
            raw = _decode_first_frame(path, ds, notes)
            photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
            grey = photometric in ("MONOCHROME1", "MONOCHROME2")
            values = apply_modality_lut(raw, ds) if grey else raw
            window = _file_window(ds) if grey else None
            monochrome1 = photometric == "MONOCHROME1"
        else:
            with Image.open(path) as img:
                _check_picture_size(path, img)
                values, window, monochrome1 = _picture_array(img, []), None, False
        values = shrink(np.asarray(values, dtype=np.float32), max_side)
    except ImageError:
        raise
    except Exception as exc:  # the boundary, as in read_image
        raise TruncatedPixelDataError(path, f"the image data cannot be decoded ({_describe(exc)})") from exc
    if window is not None:
        return ImageValues(values, path, *window, "the file's window (VOI)", monochrome1)
    step = max(1, int(np.sqrt(values.size / _PERCENTILE_SAMPLES)))
    low, high = np.percentile(values[::step, ::step], [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not high > low:
        low, high = float(values.min()), float(values.max()) + 1.0
    centre, width = (low + high) / 2, high - low
    return ImageValues(
        values, path, float(centre), float(width), "the image's 0.5-99.5 percentiles", monochrome1
    )


def shrink(arr: np.ndarray, max_side: int | None) -> np.ndarray:
    """`arr` block-averaged by a whole factor so its long side is at most `max_side` (cut to whole blocks)."""
    if max_side is None or max(arr.shape) <= max_side:
        return arr
    step = -(-max(arr.shape) // max_side)
    rows, cols = (arr.shape[0] // step) * step, (arr.shape[1] // step) * step
    blocks = arr[:rows, :cols].reshape(rows // step, step, cols // step, step)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def _file_window(ds: Dataset) -> tuple[float, float] | None:
    """The first Window Center / Width pair of the file, if it has a usable one."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    try:
        centre = float(
            centre[0] if isinstance(centre, (list, tuple, pydicom.multival.MultiValue)) else centre
        )
        width = float(width[0] if isinstance(width, (list, tuple, pydicom.multival.MultiValue)) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (centre, width) if np.isfinite(centre) and np.isfinite(width) and width > 0 else None
