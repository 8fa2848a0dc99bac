"""A corpus of bad and odd image files, made on the fly from one small synthetic image.

`make_bad_corpus(dir)` writes every file and returns one `BadCase` per file, saying what
`read_image` must do with it: raise a given `ImageError` subclass, or read ("reads"), in which
case `check` asserts on the decoded `XrayImage`. Folder-scan tests may reuse the corpus.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from pipeline.dicom import XrayImage
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

__all__ = ["BadCase", "make_bad_corpus", "base_image", "unit_scale", "LOSSY_TOLERANCE"]

ROWS, COLUMNS = 80, 96  # not square, so a transposed read fails the checks
LOSSY_TOLERANCE = 0.08  # max mean abs error in [0, 1] units allowed for lossy codecs on the phantom


@dataclass(frozen=True)
class BadCase:
    """One corpus file and what reading it must do."""

    name: str
    path: Path
    expected: type[ImageError] | Literal["reads"]
    check: Callable[[XrayImage], None] | None = None  # for "reads": asserts on the decoded image

    @property
    def reads(self) -> bool:
        """True when the file must read successfully."""
        return self.expected == "reads"


def base_image(bits: int = 12) -> np.ndarray:
    """A smooth, structured uint16 phantom with many distinct values up to 2**bits - 1."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float64)
    value = 0.45 + 0.25 * np.sin(x / 9.0) * np.cos(y / 13.0) + 0.2 * (x / COLUMNS) - 0.1 * (y / ROWS)
    value[20:40, 30:50] += 0.2  # a bright block breaks every symmetry
    value = np.clip(value, 0.0, 1.0)
    return np.round(value * (2**bits - 1)).astype(np.uint16)


def unit_scale(values: np.ndarray, invert: bool = False) -> np.ndarray:
    """The project's intensity range computed independently: 0.5/99.5 inverted-CDF percentiles."""
    values = values.astype(np.float64)
    lo = np.percentile(values, 0.5, method="inverted_cdf")
    hi = -np.percentile(-values, 0.5, method="inverted_cdf")
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    return 1.0 - out if invert else out


# --- checks ------------------------------------------------------------------------------------


def _close_to(expected: np.ndarray, *, max_abs: float = 1e-6, mean_abs: float | None = None) -> Callable:
    """A check that the pixels match `expected` (exactly up to float error, or on average)."""

    def check(image: XrayImage) -> None:
        assert image.pixels.dtype == np.float32
        assert image.pixels.shape == expected.shape
        assert 0.0 <= float(image.pixels.min()) and float(image.pixels.max()) <= 1.0
        error = np.abs(image.pixels.astype(np.float64) - expected)
        if mean_abs is None:
            assert error.max() <= max_abs, f"max abs error {error.max():.4g}"
        else:
            assert error.mean() <= mean_abs, f"mean abs error {error.mean():.4g}"

    return check


def _with_warning(words: str, inner: Callable) -> Callable:
    """A check that also requires a warning containing `words`."""

    def check(image: XrayImage) -> None:
        inner(image)
        assert any(words in w for w in image.warnings), image.warnings

    return check


def _all(*checks: Callable) -> Callable:
    """Run several checks."""

    def check(image: XrayImage) -> None:
        for inner in checks:
            inner(image)

    return check


# --- DICOM builders ----------------------------------------------------------------------------


def _dataset(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    modality: str | None = "DX",
) -> Dataset:
    """A minimal DX image dataset (with file meta) holding `pixels`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BAD-CORPUS"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    if modality is not None:
        ds.Modality = modality
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    return ds


def _save(ds: Dataset, path: Path, **kwargs) -> Path:
    """Write a DICOM file with preamble and meta."""
    ds.save_as(path, enforce_file_format=True, **kwargs)
    return path


def _compressed(path: Path, uid: str, **kwargs) -> Path:
    """The phantom compressed with pydicom's own encoders (RLE, JPEG-LS, JPEG 2000)."""
    ds = _dataset(base_image())
    ds.compress(uid, **kwargs)
    return _save(ds, path)


def _native(path: Path, syntax: str) -> Path:
    """The phantom in an uncompressed or deflated transfer syntax."""
    ds = _dataset(base_image())
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == ExplicitVRBigEndian:
        ds.PixelData = base_image().astype(">u2").tobytes()
        return _save(ds, path, implicit_vr=False, little_endian=False)
    if syntax == ImplicitVRLittleEndian:
        return _save(ds, path, implicit_vr=True, little_endian=True)
    return _save(ds, path)


def _without_preamble(path: Path) -> Path:
    """A bare implicit-VR dataset: no preamble, no 'DICM', no file meta."""
    ds = _dataset(base_image())
    del ds.file_meta
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    path.write_bytes(buffer.getvalue())
    return path


def _truncated(path: Path, fraction: float, uid: str | None = None) -> Path:
    """A good file cut short at `fraction` of its length."""
    full = path.with_suffix(".full")
    _compressed(full, uid) if uid else _save(_dataset(base_image()), full)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _colour(path: Path, photometric: str) -> Path:
    """An RGB or YBR_FULL 8-bit colour DICOM of the phantom (grey content in every channel)."""
    grey = (base_image(8)).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    ds = _dataset(rgb, photometric="RGB", bits_stored=8, modality="OT")
    if photometric == "YBR_FULL":
        from pydicom.pixels import convert_color_space

        ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
        ds.PixelData = ybr.tobytes()
        ds.PhotometricInterpretation = "YBR_FULL"
    return _save(ds, path)


def _multiframe(path: Path) -> Path:
    """Three frames; the first is the phantom, the others are noise."""
    rng = np.random.default_rng(0)
    frames = np.stack([base_image(), *rng.integers(0, 4095, (2, ROWS, COLUMNS), dtype=np.uint16)])
    return _save(_dataset(frames), path)


def _declared(path: Path, rows: int, columns: int, payload: bytes = b"\0" * 64) -> Path:
    """A header declaring rows x columns with a tiny pixel payload."""
    ds = _dataset(base_image())
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = payload
    return _save(ds, path)


def _tiny(path: Path) -> Path:
    """A real 1x1 image."""
    return _save(_dataset(np.array([[1000]], dtype=np.uint16)), path)


def _modality(path: Path, modality: str, sop_class: str) -> Path:
    """The phantom labelled as another modality."""
    ds = _dataset(base_image(), modality=modality)
    ds.SOPClassUID = sop_class
    return _save(ds, path)


def _no_pixels(path: Path) -> Path:
    """A DX header with no Pixel Data."""
    ds = _dataset(base_image())
    del ds.PixelData
    return _save(ds, path)


def _wrong_vr(path: Path) -> Path:
    """Tags written with the wrong VR or unparsable values: PixelSpacing text, StudyDate as US."""
    ds = _dataset(base_image())
    ds.add_new(0x00280030, "LO", "abc\\def")  # PixelSpacing should be DS
    ds.add_new(0x00080020, "US", 2024)  # StudyDate should be DA
    return _save(ds, path)


def _mono1(path: Path) -> Path:
    """The phantom stored inverted as MONOCHROME1: must read exactly like the MONOCHROME2 file."""
    return _save(_dataset(4095 - base_image(), photometric="MONOCHROME1"), path)


def _signed(path: Path) -> Path:
    """Signed 16-bit data with negative values (Pixel Representation 1)."""
    return _save(_dataset(base_image().astype(np.int16) - 2048), path)


def _eight_bit(path: Path) -> Path:
    """8-bit MONOCHROME2."""
    return _save(_dataset(base_image(8).astype(np.uint8), bits_stored=8), path)


def _missing(path: Path, keyword: str) -> Path:
    """The phantom without one tag."""
    ds = _dataset(base_image())
    delattr(ds, keyword)
    return _save(ds, path)


def _ot(path: Path) -> Path:
    """Secondary capture labelled OT."""
    return _save(_dataset(base_image(), modality="OT"), path)


def _padding(path: Path) -> Path:
    """A border of Pixel Padding Value 0 around the phantom."""
    pixels = _padded_pixels()
    ds = _dataset(pixels)
    ds.PixelPaddingValue = 0
    return _save(ds, path)


def _padded_pixels() -> np.ndarray:
    """The phantom (values >= 1) with a 0-valued 8-pixel frame marked as padding."""
    pixels = np.maximum(base_image(), 1)
    pixels[:8], pixels[-8:], pixels[:, :8], pixels[:, -8:] = 0, 0, 0, 0
    return pixels


def _rescale_window(path: Path) -> Path:
    """Rescale slope 2, intercept -1000, and a window defined in rescaled units."""
    ds = _dataset(base_image())
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    return _save(ds, path)


def _voi_sequence(path: Path) -> Path:
    """A VOI LUT Sequence applying a square-root curve to the 12-bit values."""
    ds = _dataset(base_image())
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = _sqrt_lut().tolist()
    item.LUTExplanation = "square root"
    ds.VOILUTSequence = Sequence([item])
    ds["VOILUTSequence"].value[0]["LUTData"].VR = "US"
    return _save(ds, path)


def _sqrt_lut() -> np.ndarray:
    """The 4096-entry square-root VOI LUT used by `_voi_sequence`."""
    return np.round(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)


def _constant(path: Path) -> Path:
    """Every pixel 1234."""
    return _save(_dataset(np.full((ROWS, COLUMNS), 1234, dtype=np.uint16)), path)


def _unsupported_syntax(path: Path) -> Path:
    """Pixel data labelled as MPEG2 video, which no installed decoder reads."""
    ds = _dataset(base_image())
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\0" * 60])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    return _save(ds, path)


def _jpeg_baseline(path: Path) -> Path:
    """8-bit grey JPEG baseline made with Pillow and encapsulated."""
    buffer = io.BytesIO()
    Image.fromarray(base_image(8).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    ds = _dataset(base_image(8).astype(np.uint8), bits_stored=8)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return _save(ds, path)


def _empty_undefined_length(path: Path) -> Path:
    """Encapsulated JPEG 2000 whose only fragment is garbage."""
    ds = _dataset(base_image())
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x13" * 40])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return _save(ds, path)


# --- pictures and non-images -------------------------------------------------------------------


def _png(path: Path, bits: int) -> Path:
    """A grey PNG of the phantom, 8 or 16 bits."""
    array = base_image(bits).astype(np.uint16 if bits == 16 else np.uint8)
    Image.fromarray(array).save(path, format="PNG")
    return path


def _jpeg_rgb(path: Path) -> Path:
    """An RGB JPEG of the phantom."""
    grey = base_image(8).astype(np.uint8)
    Image.fromarray(np.stack([grey, grey, grey], axis=-1)).save(path, quality=95)
    return path


def _png_huge_header(path: Path) -> Path:
    """A PNG whose header claims 65535x65535 (a decompression bomb) with no real data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 65535, 65535, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _png_truncated(path: Path) -> Path:
    """A 16-bit PNG cut in half."""
    full = _png(path.with_suffix(".full.png"), 16)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def _write(path: Path, data: bytes) -> Path:
    """Raw bytes."""
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    """A directory whose name ends in .dcm."""
    path.mkdir()
    return path


# --- the corpus --------------------------------------------------------------------------------


def _reference() -> dict[str, np.ndarray]:
    """Expected [0, 1] pixels for the readable cases, computed without pipeline code."""
    base = base_image().astype(np.float64)
    grey8 = base_image(8).astype(np.float64)
    padded = _padded_pixels().astype(np.float64)
    inner = padded[8:-8, 8:-8]
    lo = np.percentile(inner, 0.5, method="inverted_cdf")
    hi = -np.percentile(-inner, 0.5, method="inverted_cdf")
    padded_unit = np.clip((padded - lo) / (hi - lo), 0, 1)
    padded_unit[padded == 0] = 0.0
    modality = base * 2 - 1000
    windowed = np.clip((modality - (2000 - 0.5)) / (3000 - 1) + 0.5, 0, 1)
    return {
        "base": unit_scale(base),
        "grey8": unit_scale(grey8),
        "padded": padded_unit,
        "windowed": unit_scale(windowed),
        "sqrt": unit_scale(_sqrt_lut()[base_image()].astype(np.float64)),
    }


def make_bad_corpus(dir: Path) -> list[BadCase]:
    """Write every corpus file into `dir` (which must exist) and return the cases."""
    dir = Path(dir)
    ref = _reference()
    exact = _close_to(ref["base"])
    lossy = _close_to(ref["base"], mean_abs=LOSSY_TOLERANCE)
    grey8 = _close_to(ref["grey8"], max_abs=2e-2)
    table: list[tuple[str, Callable[[Path], Path], type[ImageError] | str, Callable | None]] = [
        ("zero_bytes.dcm", lambda p: _write(p, b""), NotAnImageError, None),
        (
            "text_renamed.dcm",
            lambda p: _write(p, b"Patient: Doe\nThis is a note, not an image.\n" * 20),
            NotAnImageError,
            None,
        ),
        (
            "random_bytes.dcm",
            lambda p: _write(p, np.random.default_rng(1).bytes(4096)),
            NotAnImageError,
            None,
        ),
        ("folder.dcm", _folder, NotAnImageError, None),
        ("truncated_pixels.dcm", lambda p: _truncated(p, 0.6), TruncatedPixelDataError, None),
        ("truncated_header.dcm", lambda p: _truncated(p, 0.02), NoPixelDataError, None),
        ("truncated_j2k.dcm", lambda p: _truncated(p, 0.7, JPEG2000Lossless), TruncatedPixelDataError, None),
        ("garbage_j2k.dcm", _empty_undefined_length, TruncatedPixelDataError, None),
        ("no_pixel_data.dcm", _no_pixels, NoPixelDataError, None),
        ("ct.dcm", lambda p: _modality(p, "CT", CTImageStorage), UnsupportedModalityError, None),
        ("mr.dcm", lambda p: _modality(p, "MR", MRImageStorage), UnsupportedModalityError, None),
        (
            "us.dcm",
            lambda p: _modality(p, "US", "1.2.840.10008.5.1.4.1.1.6.1"),
            UnsupportedModalityError,
            None,
        ),
        ("mpeg2.dcm", _unsupported_syntax, UnsupportedSyntaxError, None),
        ("one_by_one.dcm", _tiny, DimensionsError, None),
        ("huge_declared.dcm", lambda p: _declared(p, 65535, 65535), DimensionsError, None),
        ("no_rows.dcm", lambda p: _missing(p, "Rows"), DimensionsError, None),
        ("constant.dcm", _constant, EmptyImageError, None),
        ("explicit_le.dcm", lambda p: _native(p, ExplicitVRLittleEndian), "reads", exact),
        ("implicit_vr.dcm", lambda p: _native(p, ImplicitVRLittleEndian), "reads", exact),
        ("big_endian.dcm", lambda p: _native(p, ExplicitVRBigEndian), "reads", exact),
        ("deflated.dcm", lambda p: _native(p, DeflatedExplicitVRLittleEndian), "reads", exact),
        ("no_preamble.dcm", _without_preamble, "reads", exact),
        ("rle.dcm", lambda p: _compressed(p, RLELossless), "reads", exact),
        ("jpeg_ls.dcm", lambda p: _compressed(p, JPEGLSLossless), "reads", exact),
        ("j2k_lossless.dcm", lambda p: _compressed(p, JPEG2000Lossless), "reads", exact),
        ("j2k_lossy.dcm", lambda p: _compressed(p, JPEG2000, j2k_cr=[20]), "reads", lossy),
        ("jpeg_baseline.dcm", _jpeg_baseline, "reads", _close_to(ref["grey8"], mean_abs=LOSSY_TOLERANCE)),
        ("mono1.dcm", _mono1, "reads", exact),
        ("signed16.dcm", _signed, "reads", exact),
        ("eight_bit.dcm", _eight_bit, "reads", grey8),
        ("rgb.dcm", lambda p: _colour(p, "RGB"), "reads", _with_warning("converted to grey", grey8)),
        (
            "ybr_full.dcm",
            lambda p: _colour(p, "YBR_FULL"),
            "reads",
            _with_warning("converted to grey", grey8),
        ),
        ("multiframe.dcm", _multiframe, "reads", _with_warning("first frame used", exact)),
        (
            "no_study_uid.dcm",
            lambda p: _missing(p, "StudyInstanceUID"),
            "reads",
            _with_warning("Study Instance UID", exact),
        ),
        (
            "no_view_position.dcm",
            lambda p: _missing(p, "ViewPosition"),
            "reads",
            _all(exact, _no_view_position),
        ),
        ("no_modality.dcm", lambda p: _missing(p, "Modality"), "reads", _with_warning("no Modality", exact)),
        ("modality_ot.dcm", _ot, "reads", _with_warning("OT", exact)),
        ("wrong_vr.dcm", _wrong_vr, "reads", _all(exact, _no_spacing)),
        ("pixel_padding.dcm", _padding, "reads", _close_to(ref["padded"])),
        ("rescale_window.dcm", _rescale_window, "reads", _close_to(ref["windowed"], max_abs=1e-5)),
        ("voi_lut_sequence.dcm", _voi_sequence, "reads", _close_to(ref["sqrt"], max_abs=1e-5)),
        ("png8.png", lambda p: _png(p, 8), "reads", grey8),
        (
            "png16.png",
            lambda p: _png(p, 16),
            "reads",
            _close_to(unit_scale(base_image(16).astype(np.float64))),
        ),
        (
            "jpeg_rgb.jpg",
            _jpeg_rgb,
            "reads",
            _with_warning("RGB converted to grey", _close_to(ref["grey8"], mean_abs=0.02)),
        ),
        ("png_huge_header.png", _png_huge_header, DimensionsError, None),
        ("png_truncated.png", _png_truncated, TruncatedPixelDataError, None),
        (
            "png_renamed.dcm",
            lambda p: _png(p, 16),
            "reads",
            _close_to(unit_scale(base_image(16).astype(np.float64))),
        ),
    ]
    return [BadCase(name, make(dir / name), expected, check) for name, make, expected, check in table]


def _no_view_position(image: XrayImage) -> None:
    """ViewPosition absent reads as ""."""
    assert image.view_position == ""


def _no_spacing(image: XrayImage) -> None:
    """An unparsable PixelSpacing reads as None."""
    assert image.pixel_spacing is None
