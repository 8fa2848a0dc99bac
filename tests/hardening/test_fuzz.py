"""Structural fuzzing of the DICOM reader: mutated valid files go through `read_image`, `read_header` and `scan_folder`.

Mutations: absurd Rows/Columns/BitsAllocated/SamplesPerPixel/NumberOfFrames, wrong VRs, odd or bogus
transfer syntaxes, broken LUTs and windows, cut or padded pixel data, then flipped, cut, inserted and
deleted bytes. Whatever comes in, only `ImageError`s (or clean set-aside entries) come out, within a
time limit per example and a bound on the memory allocated. `TWOVIEW_FUZZ_EXAMPLES` sets how many.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import tempfile
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from pipeline.dicom import read_header, read_image
from pipeline.errors import ImageError
from pipeline.studies import scan_folder
from tests.pipeline.badfiles import make_bad_corpus

EXAMPLES = int(os.environ.get("TWOVIEW_FUZZ_EXAMPLES", "200"))
SECONDS_PER_EXAMPLE = 10.0  # a hang is anything slower; the seeds read in milliseconds
PEAK_BYTES = 96 * 2**20  # the seeds are 80x96 pixels: no mutation may make a reader allocate more

SIDES = [0, 1, 2, 31, 32, 33, 79, 80, 81, 96, 97, 255, 1024, 4096, 16384, 16385, 32768, 65535]
BITS = [0, 1, 7, 8, 12, 15, 16, 17, 24, 32, 33, 64, 255, 65535]
SAMPLES = [0, 1, 2, 3, 4, 255, 65535]
FRAMES = ["0", "-1", "1", "2", "3", "1000", "2147483647", "99999999999", "1.5", "abc", ""]
PHOTOMETRIC = ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "HSV", ""]
SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    RLELossless,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    JPEGLSLossless,
    "1.2.840.10008.1.2.4.100",  # MPEG2
    "1.2.840.10008.1.2.4.999",
    "1.2.3.4",
    "not a uid",
    "",
]
NUMBERS = ["0", "-1", "1e308", "-1e308", "nan", "inf", "1.5", "abc", "", "65536", "1\\2\\x"]
KEYWORDS = [
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PlanarConfiguration",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "PixelSpacing",
    "PixelPaddingValue",
    "StudyInstanceUID",
    "ViewPosition",
    "BodyPartExamined",
    "Modality",
    "PixelData",
]
RAW_BY_VR: dict[str, list[bytes]] = {  # values as they would sit in a damaged file
    "LO": [b"abc\\def ", b"", b"x" * 64],
    "DS": [b"nan ", b"1e400 ", b"-0", b"12.5", b"abc ", b"inf "],
    "IS": [b"99999999999 ", b"-5", b"0 ", b"1.5 "],
    "US": [b"\x00\x00", b"\xff\xff", b"\x20"],
    "SS": [b"\x00\x80", b"\xff\xff"],
    "UL": [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"],
    "FD": [b"\x00\x00\x00\x00\x00\x00\xf8\x7f", b"\x01\x02\x03"],
    "OB": [b"", b"\x00", b"\xff" * 7, bytes(range(256))],
    "UN": [b"\x01\x02\x03", b""],
    "AT": [b"\x10\x00\x10\x00"],
    "SQ": [b"\xfe\xff\x00\xe0\x08\x00\x00\x00garbage!"],
}


def _raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> None:
    """Put `value` into the dataset as undecoded bytes with the given VR, as a damaged file would hold it."""
    tag = Tag(keyword)
    implicit, little = ds.original_encoding
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, bool(implicit), little is not False)


class Seeds(list):
    """The seed files' bytes, with a short repr (Hypothesis prints the arguments of a failing example)."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed files>"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Seeds:
    """Every DICOM file of the bad-file corpus that reads (native, deflated, RLE, JPEG, JPEG-LS, J2K, colour, ...)."""
    folder = tmp_path_factory.mktemp("seeds")
    cases = make_bad_corpus(folder)
    chosen = Seeds(c.path.read_bytes() for c in cases if c.reads and c.path.suffix == ".dcm")
    assert len(chosen) >= 15
    return chosen


@pytest.fixture(scope="module")
def traced() -> Iterator[None]:
    """tracemalloc on; pydicom's many warnings about the invalid values quietened (they are the point)."""
    quiet = logging.getLogger("pydicom")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    tracemalloc.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    tracemalloc.stop()
    quiet.setLevel(level)


class Hang(Exception):
    """An example took longer than SECONDS_PER_EXAMPLE."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `Hang` in this thread when the block runs longer than `seconds` (SIGALRM)."""

    def alarm(signum: int, frame: object) -> None:
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- mutations -----------------------------------------------------------------------------------

Mutation = Callable[[Dataset, st.DataObject], None]


def _set_absurd_int(ds: Dataset, data: st.DataObject) -> None:
    keyword, choices = data.draw(
        st.sampled_from(
            [
                ("Rows", SIDES),
                ("Columns", SIDES),
                ("BitsAllocated", BITS),
                ("BitsStored", BITS),
                ("HighBit", BITS),
                ("SamplesPerPixel", SAMPLES),
                ("PixelRepresentation", [0, 1, 2, 65535]),
                ("PlanarConfiguration", [0, 1, 2]),
                ("PixelPaddingValue", [0, 1, 4095, 65535]),
            ]
        ),
        label="field",
    )
    setattr(ds, keyword, data.draw(st.sampled_from(choices), label=keyword))


def _set_frames(ds: Dataset, data: st.DataObject) -> None:
    _raw(ds, "NumberOfFrames", "IS", data.draw(st.sampled_from(FRAMES), label="frames").encode())


def _set_photometric(ds: Dataset, data: st.DataObject) -> None:
    ds.PhotometricInterpretation = data.draw(st.sampled_from(PHOTOMETRIC), label="photometric")


def _set_syntax(ds: Dataset, data: st.DataObject) -> None:
    ds.file_meta.TransferSyntaxUID = data.draw(st.sampled_from(SYNTAXES), label="syntax")


def _wrong_vr(ds: Dataset, data: st.DataObject) -> None:
    keyword = data.draw(st.sampled_from(KEYWORDS), label="element")
    vr = data.draw(st.sampled_from(sorted(RAW_BY_VR)), label="vr")
    _raw(ds, keyword, vr, data.draw(st.sampled_from(RAW_BY_VR[vr]), label="value"))


def _delete(ds: Dataset, data: st.DataObject) -> None:
    keyword = data.draw(st.sampled_from(KEYWORDS), label="deleted")
    if keyword in ds:
        del ds[keyword]


def _numbers(ds: Dataset, data: st.DataObject) -> None:
    keyword = data.draw(
        st.sampled_from(["RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"]), label="lut"
    )
    _raw(ds, keyword, "DS", data.draw(st.sampled_from(NUMBERS), label="number").encode())


def _lut_sequence(ds: Dataset, data: st.DataObject) -> None:
    item = Dataset()
    entries = data.draw(st.sampled_from([0, 1, 4, 4096, 65535]), label="lut entries")
    first = data.draw(st.sampled_from([0, -100, 65535]), label="lut first")
    bits = data.draw(st.sampled_from([0, 8, 16, 17]), label="lut bits")
    item.add_new(Tag("LUTDescriptor"), "US", [entries, first % 65536, bits])
    length = data.draw(st.integers(0, 64), label="lut data")
    item.add_new(Tag("LUTData"), "OW", np.arange(length, dtype="<u2").tobytes())
    keyword = data.draw(st.sampled_from(["VOILUTSequence", "ModalityLUTSequence"]), label="lut kind")
    setattr(ds, keyword, Sequence([item]))


def _pixel_length(ds: Dataset, data: st.DataObject) -> None:
    if "PixelData" not in ds:
        return
    raw = bytes(ds.PixelData)
    cut = data.draw(st.integers(0, len(raw)), label="pixel bytes kept")
    extra = data.draw(st.binary(max_size=64), label="pixel bytes added")
    ds.PixelData = raw[:cut] + extra


UNWRITABLE: list[int] = []  # mutated datasets pydicom could not write (their originals were fuzzed)
MUTATIONS: list[Mutation] = [
    _set_absurd_int,
    _set_frames,
    _set_photometric,
    _set_syntax,
    _wrong_vr,
    _delete,
    _numbers,
    _lut_sequence,
    _pixel_length,
]


def _serialise(ds: Dataset, original: bytes) -> bytes:
    """The mutated dataset as bytes, written as the original was encoded; the original when pydicom refuses."""
    implicit, little = ds.original_encoding
    buffer = io.BytesIO()
    try:
        with config.disable_value_validation():
            ds.save_as(buffer, implicit_vr=bool(implicit), little_endian=little is not False)
    except Exception:  # the mutation cannot be written at all: fuzz the bytes of the original instead
        UNWRITABLE.append(1)
        return original
    return buffer.getvalue()


def _bytes_mutations(raw: bytes, data: st.DataObject) -> bytes:
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(0, 3), label="byte edits")):
        if not out:
            break
        at = data.draw(st.integers(0, len(out) - 1), label="at")
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]), label="edit")
        if kind == "flip":
            out[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif kind == "cut":
            del out[max(at, 1) :]
        elif kind == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=16), label="inserted")
        else:
            del out[at : at + data.draw(st.integers(1, 64), label="deleted bytes")]
    return bytes(out)


def mutated(seeds: list[bytes], data: st.DataObject) -> bytes:
    """One seed, with structural mutations on the parsed dataset, then byte edits."""
    original = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    ds = pydicom.dcmread(io.BytesIO(original), force=True)
    for mutation in data.draw(
        st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=4), label="mutations"
    ):
        try:
            mutation(ds, data)
        except Exception:  # pydicom refuses this edit (text into an AT, pixels of an odd length, ...)
            continue
    return _bytes_mutations(_serialise(ds, original), data)


# --- properties ----------------------------------------------------------------------------------


def _is_decoder_panic(exc: BaseException) -> bool:
    """A Rust decoder's panic (pylibjpeg-rle): pyo3 raises it as a BaseException, past `except Exception`."""
    return type(exc).__name__ == "PanicException"


def _check_image(path: Path, read: Callable) -> str:
    """`read(path)`: a sane image or an ImageError naming the file; anything else fails the test.

    A decoder panic is counted (and pinned by `test_a_decoder_panic_is_an_image_error`), not failed on.
    """
    try:
        image = read(path)
    except ImageError as err:
        assert str(path) in str(err) and err.reason
        return type(err).__name__
    except BaseException as exc:
        if _is_decoder_panic(exc):
            return DECODER_PANIC
        raise
    if image.pixels.size:
        pixels = image.pixels
        assert pixels.dtype == np.float32 and pixels.ndim == 2 and np.isfinite(pixels).all()
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    return "read"


OUTCOMES: dict[str, int] = {}
PYDICOM_READ_AHEAD = "pydicom read-ahead (known)"
DECODER_PANIC = "RLE decoder panic (known)"


def _dcmread_peak(path: Path) -> int:
    """The bytes pydicom's own dcmread allocates at its peak for `path` (errors ignored)."""
    tracemalloc.reset_peak()
    try:
        pydicom.dcmread(path, force=True)
    except Exception:  # only its allocation matters here
        pass
    return tracemalloc.get_traced_memory()[1]


@contextmanager
def bounded(label: str, *paths: Path) -> Iterator[None]:
    """Time limit and allocation bound for one example.

    A file whose damaged header declares a huge element length makes pydicom's dcmread call
    `file.read(length)`, which allocates `length` bytes before reading (see `test_a_declared_length_...`):
    such examples are counted apart, and only an allocation of twoview's own fails here.
    """
    tracemalloc.reset_peak()
    with time_limit(SECONDS_PER_EXAMPLE):
        yield
    peak = tracemalloc.get_traced_memory()[1]
    if peak >= PEAK_BYTES and max(map(_dcmread_peak, paths)) >= PEAK_BYTES:
        OUTCOMES[PYDICOM_READ_AHEAD] = OUTCOMES.get(PYDICOM_READ_AHEAD, 0) + 1
        return
    assert peak < PEAK_BYTES, f"{label}: {peak / 2**20:.0f} MiB allocated"


@settings(
    max_examples=EXAMPLES,
    deadline=None,  # the per-example SIGALRM limit above replaces it (CPU contention makes deadlines flaky)
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_read_image_and_header_raise_only_image_errors(seeds, traced, data):
    raw = mutated(seeds, data)
    with tempfile.TemporaryDirectory(prefix="twoview-fuzz-") as tmp:
        path = Path(tmp) / "fuzzed.dcm"
        path.write_bytes(raw)
        with bounded("read_image", path):
            outcome = _check_image(path, read_image)
        with bounded("read_header", path):
            _check_image(path, read_header)
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1


@settings(
    max_examples=max(EXAMPLES // 3, 10),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data(), verify=st.booleans())
def test_scan_folder_sets_aside_cleanly(seeds, traced, data, verify):
    files = [mutated(seeds, data) for _ in range(data.draw(st.integers(1, 3), label="files"))]
    with tempfile.TemporaryDirectory(prefix="twoview-fuzz-") as tmp:
        root = Path(tmp)
        paths = []
        for i, raw in enumerate(files):
            path = root / f"d{i}" / f"f{i}"
            path.parent.mkdir()
            path.write_bytes(raw)
            paths.append(path)
        try:
            with bounded("scan_folder", *paths):
                scan = scan_folder(root, verify_pixels=verify)
        except BaseException as exc:
            if not _is_decoder_panic(exc):
                raise
            OUTCOMES[DECODER_PANIC] = OUTCOMES.get(DECODER_PANIC, 0) + 1
            return
        seen = {s.path for s in scan.sources} | {a.path for a in scan.set_aside}
        assert seen == set(paths)
        for item in scan.set_aside:
            assert item.reason and not item.reason.startswith("unexpected"), item.reason
        shutil.rmtree(root, ignore_errors=True)


def test_report_outcomes():
    """Prints how the fuzzed files ended (for the benchmark record); runs after the fuzz above."""
    if OUTCOMES:
        total = sum(OUTCOMES.values())
        print(
            f"\nfuzzed files: {total}; "
            + ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items()))
            + f"; structural edits pydicom could not write: {len(UNWRITABLE)}"
        )


def test_a_declared_length_does_not_allocate_it(seeds, traced, tmp_path):
    ds = pydicom.dcmread(io.BytesIO(seeds[1]), force=True)  # implicit VR little endian
    assert ds.original_encoding == (True, True)
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    raw = bytearray(buffer.getvalue())
    del raw[146]  # inside the file meta: the meta group's element lengths shift
    path = tmp_path / "shifted.dcm"
    path.write_bytes(bytes(raw))
    tracemalloc.reset_peak()
    with pytest.raises(ImageError):
        read_image(path)
    assert tracemalloc.get_traced_memory()[1] < PEAK_BYTES


def test_a_decoder_panic_is_an_image_error(seeds, tmp_path):
    rle = next(s for s in seeds if RLELossless.encode() in s[:400])
    ds = pydicom.dcmread(io.BytesIO(rle))
    ds.Rows = 32  # the encoded image has 80 rows
    path = tmp_path / "rle_rows.dcm"
    ds.save_as(path)
    try:
        read_image(path)
    except ImageError:
        return
    except BaseException as exc:  # what must not happen: anything but an ImageError
        raise AssertionError(f"{type(exc).__name__} escaped read_image: {exc}") from None
