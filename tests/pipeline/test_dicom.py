"""pipeline.dicom: the real RG1 chest film in four encodings, and a corpus of bad and odd files."""

from __future__ import annotations

import logging
import tracemalloc
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from pipeline.dicom import XrayImage, is_dicom, read_header, read_image
from pipeline.errors import DimensionsError, ImageError, TwoviewError
from tests.pipeline.badfiles import BadCase, base_image, make_bad_corpus

RG1 = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")
LOSSY_MEAN_ABS = 0.005  # J2KI vs the uncompressed original, in [0, 1] units (measured 0.0023)
LOSSY_MAX_ABS = 0.05  # measured 0.018


@pytest.fixture(scope="module")
def rg1() -> dict[str, XrayImage]:
    """The four RG1 encodings, decoded once."""
    return {name: read_image(get_testdata_file(name)) for name in RG1}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BadCase]:
    """The bad-file corpus, written once per module."""
    return {case.name: case for case in make_bad_corpus(tmp_path_factory.mktemp("corpus"))}


def _corpus_names() -> list[str]:
    """Case names, for parametrising (the corpus is cheap to build)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return [case.name for case in make_bad_corpus(Path(tmp))]


CORPUS_NAMES = _corpus_names()


# --- the real radiograph -----------------------------------------------------------------------


def test_rg1_lossless_encodings_give_identical_pixels(rg1: dict[str, XrayImage]) -> None:
    np.testing.assert_array_equal(rg1["RG1_UNCR.dcm"].pixels, rg1["RG1_J2KR.dcm"].pixels)
    np.testing.assert_array_equal(rg1["RG1_UNCI.dcm"].pixels, rg1["RG1_J2KI.dcm"].pixels)


def test_rg1_lossy_is_close_to_the_original(rg1: dict[str, XrayImage]) -> None:
    error = np.abs(rg1["RG1_J2KI.dcm"].pixels - rg1["RG1_UNCR.dcm"].pixels)
    assert 0 < error.mean() <= LOSSY_MEAN_ABS
    assert error.max() <= LOSSY_MAX_ABS


@pytest.mark.parametrize("name", RG1)
def test_rg1_pixels_and_metadata(rg1: dict[str, XrayImage], name: str) -> None:
    image = rg1[name]
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (1955, 1841)
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0
    assert (image.rows, image.columns) == (1955, 1841)
    assert image.modality == "CR" and image.view_position == "PA" and image.body_part == "CHEST"
    assert image.patient_orientation == "L\\F" and image.photometric == "MONOCHROME1"
    assert image.study_uid == "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
    assert image.transfer_syntax.startswith("1.2.840.10008.1.2")
    assert image.warnings == ()


@pytest.mark.parametrize("apply_voi", [True, False])
def test_rg1_monochrome1_is_inverted_so_bone_is_bright(apply_voi: bool) -> None:
    """Mediastinum and spine (a central strip) must be brighter than both lung fields."""
    pixels = read_image(get_testdata_file("RG1_UNCR.dcm"), apply_voi=apply_voi).pixels
    rows, cols = pixels.shape
    band = slice(int(rows * 0.3), int(rows * 0.6))
    mediastinum = pixels[band, int(cols * 0.46) : int(cols * 0.54)].mean()
    right_lung = pixels[band, int(cols * 0.2) : int(cols * 0.33)].mean()
    left_lung = pixels[band, int(cols * 0.67) : int(cols * 0.8)].mean()
    assert mediastinum > right_lung + 0.1 and mediastinum > left_lung + 0.1


def test_read_header_matches_read_image_without_pixels(rg1: dict[str, XrayImage]) -> None:
    header = read_header(get_testdata_file("RG1_J2KR.dcm"))
    full = rg1["RG1_J2KR.dcm"]
    assert header.pixels.size == 0
    for f in fields(XrayImage):
        if f.name != "pixels":
            assert getattr(header, f.name) == getattr(full, f.name), f.name


# --- the corpus --------------------------------------------------------------------------------


def test_corpus_is_big_and_mixed() -> None:
    assert len(CORPUS_NAMES) >= 25 and len(set(CORPUS_NAMES)) == len(CORPUS_NAMES)


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_file(corpus: dict[str, BadCase], name: str) -> None:
    """Each file either reads with the right pixels, or raises the right ImageError naming the file."""
    case = corpus[name]
    if case.reads:
        image = read_image(case.path)
        assert image.path == case.path
        assert case.check is not None
        case.check(image)
        return
    with pytest.raises(case.expected) as info:
        read_image(case.path)
    assert type(info.value) is case.expected
    assert info.value.path == case.path and str(case.path) in str(info.value)
    assert len(info.value.reason) > 15


def test_huge_declared_image_is_refused_without_allocating(corpus: dict[str, BadCase]) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DimensionsError, match="65535x65535"):
            read_image(corpus["huge_declared.dcm"].path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_unsupported_syntax_is_named(corpus: dict[str, BadCase]) -> None:
    with pytest.raises(ImageError, match=r"MPEG2.*1\.2\.840\.10008\.1\.2\.4\.100"):
        read_image(corpus["mpeg2.dcm"].path)


def test_apply_voi_false_ignores_window_and_voi_lut(corpus: dict[str, BadCase]) -> None:
    reference = read_image(corpus["explicit_le.dcm"].path).pixels
    for name in ("rescale_window.dcm", "voi_lut_sequence.dcm"):
        plain = read_image(corpus[name].path, apply_voi=False).pixels
        np.testing.assert_allclose(plain, reference, atol=1e-6)
        assert not np.allclose(read_image(corpus[name].path).pixels, reference, atol=1e-3)


def test_is_dicom_by_content_not_extension(corpus: dict[str, BadCase]) -> None:
    assert is_dicom(get_testdata_file("RG1_UNCR.dcm"))
    assert is_dicom(corpus["no_preamble.dcm"].path)
    for name in ("png_renamed.dcm", "text_renamed.dcm", "zero_bytes.dcm", "folder.dcm", "png16.png"):
        assert not is_dicom(corpus[name].path), name


def test_read_header_refuses_what_the_header_shows(corpus: dict[str, BadCase]) -> None:
    for name in ("ct.dcm", "huge_declared.dcm", "mpeg2.dcm", "text_renamed.dcm"):
        with pytest.raises(corpus[name].expected):
            read_header(corpus[name].path)
    png = read_header(corpus["png16.png"].path)
    assert (png.rows, png.columns) == base_image().shape and png.pixels.size == 0


def test_pixel_spacing_prefers_pixel_spacing_then_imager(tmp_path: Path) -> None:
    from tests.pipeline.badfiles import _dataset, _save

    ds = _dataset(base_image())
    ds.ImagerPixelSpacing = [0.15, 0.16]
    assert read_image(_save(ds, tmp_path / "imager.dcm")).pixel_spacing == (0.15, 0.16)
    ds.PixelSpacing = [0.2, 0.2]
    assert read_image(_save(ds, tmp_path / "both.dcm")).pixel_spacing == (0.2, 0.2)


def test_warnings_are_logged_not_printed(
    corpus: dict[str, BadCase], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.dicom"):
        image = read_image(corpus["multiframe.dcm"].path)
    assert image.warnings and any("first frame used" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr() == ("", "")


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "nowhere.dcm")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_files_only_raise_image_errors(
    corpus: dict[str, BadCase], tmp_path: Path, data: st.DataObject
) -> None:
    """Random byte flips and cuts of good files: a valid image or an ImageError, nothing else."""
    source = corpus[
        data.draw(st.sampled_from(["explicit_le.dcm", "rle.dcm", "j2k_lossless.dcm", "png16.png"]))
    ]
    raw = bytearray(source.path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    path = tmp_path / ("damaged" + source.path.suffix)
    path.write_bytes(bytes(raw[:cut]))
    try:
        image = read_image(path)
    except TwoviewError as exc:
        assert isinstance(exc, ImageError) and str(path) in str(exc)
        return
    assert image.pixels.dtype == np.float32 and image.pixels.ndim == 2
    assert np.isfinite(image.pixels).all() and 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0


def test_the_pixel_data_tag_is_found_across_chunk_edges(tmp_path):
    from pipeline.dicom import _contains

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 9 + b"\xe0\x7f\x10\x00" + b"y" * 20)
    for chunk in (4, 5, 8, 10, 11, 64):
        assert _contains(path, (b"\xe0\x7f\x10\x00",), chunk=chunk)
    assert not _contains(path, (b"\x7f\xe0\x00\x10",), chunk=5)
