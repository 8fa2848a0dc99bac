"""Reduced-resolution decoding for the model path: `read_image(target_size=)` and `StudyDataset(reduced=)`.

Each code path (JPEG 2000 `reduce`, JPEG `draft`, integer block averaging of uncompressed, RLE and
JPEG-LS pixels, uncompressed views with stray high bits, damaged streams) is checked against the
full-resolution read resized the same way, and the model's probabilities against the full path.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

import pipeline.dicom as dicom
from models.config import ModelConfig
from pipeline import transforms
from pipeline.data import DECODE_OVERSAMPLING, ImageCache, StudyDataset, collate
from pipeline.dicom import XrayImage, read_image
from pipeline.errors import ImageError
from pipeline.predict import Predictor, load_model
from pipeline.studies import scan_folder
from pipeline.transforms import pad_square, preprocess, preprocess_transform, resize_reduced
from tests.pipeline.badfiles import BadCase, _dataset, _save, make_bad_corpus

REAL_DEV = Path(
    os.environ.get("TWOVIEW_REAL_DEV", Path(__file__).resolve().parents[2] / "../shared/real-dev")
)
SAMPLE_STUDIES = Path(__file__).resolve().parents[2] / "sample_data" / "studies"
# The allowed |reduced - full| per head and label (the target). Both paths read the intensity range
# at one scale (`dicom.RANGE_SIDE`): RG1 gives 0.003, the sample studies and real-dev films 0.
PROBABILITY_TOLERANCE = 0.02
SIZE = 64  # the model input size of these tests


def phantom(rows: int = 520, cols: int = 456, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A chest-like uint16 test image: smooth anatomy, sharp edges and noise, many distinct values."""
    y, x = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    value = 0.5 + 0.2 * np.sin(9 * x) * np.cos(7 * y) + 0.15 * x - 0.1 * y
    value[rows // 5 : rows // 2, cols // 4 : cols // 2] += 0.25  # a bright block with sharp edges
    value += np.random.default_rng(seed).normal(0, 0.01, value.shape)  # quantum noise
    return np.round(np.clip(value, 0, 1) * (2**bits - 1)).astype(np.uint16)


def model_input(image: XrayImage, size: int = SIZE) -> np.ndarray:
    """What the model sees: the project's resize-and-pad, from the full or the reduced pixels."""
    full_size = (image.rows, image.columns)
    return preprocess(
        image.pixels, ModelConfig.tiny(image_size=size), full_size=full_size, reduction=image.reduction
    )[0]


def assert_same_model_input(
    reduced: XrayImage, full: XrayImage, *, size: int = SIZE, mean: float = 0.015
) -> None:
    """Reduced and full reads agree after preprocessing, up to resampling and the percentiles.

    Smooth regions differ little (the percentiles of a less noisy image); the few pixels on sharp
    edges differ more where the decoder's low-pass is not a block mean (JPEG 2000, JPEG).
    """
    assert reduced.reduction > 1 and full.reduction == 1
    error = np.abs(model_input(reduced, size) - model_input(full, size))
    assert error.mean() <= mean, f"mean abs error {error.mean():.4f}"
    assert np.percentile(error, 95) <= 0.04, f"95th percentile abs error {np.percentile(error, 95):.4f}"
    assert error.max() <= 0.3, f"max abs error {error.max():.4f}"


def specked_film(top: int = 4095, seed: int = 1) -> np.ndarray:
    """A 1955 x 1841 phantom whose brightest 0.5 % are single-pixel specks at `top`, as a film's lie in
    markers and edges, with a flat square of 2200 at rows and columns 100-300."""
    pixels = phantom(1955, 1841)
    rng = np.random.default_rng(seed)
    pixels[rng.integers(0, 1955, 25_000), rng.integers(0, 1841, 25_000)] = top
    pixels[100:300, 100:300] = 2200
    return pixels


def write(path: Path, pixels: np.ndarray, syntax: str | None = None, **tags) -> Path:
    """A DX file holding `pixels`, compressed with pydicom's encoders when `syntax` is given."""
    ds = _dataset(pixels, bits_stored=12 if pixels.dtype == np.uint16 else 8)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if syntax == JPEG2000:
        ds.compress(syntax, j2k_cr=[20])
    elif syntax is not None:
        ds.compress(syntax)
    return _save(ds, path)


def counting(monkeypatch: pytest.MonkeyPatch, name: str, module=dicom) -> list:
    """Wrap `<module>.<name>` (default `pipeline.dicom`) so a test sees each result it returns."""
    real = getattr(module, name)
    seen: list[np.ndarray | None] = []

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(module, name, spy)
    return seen


# --- block averaging ---------------------------------------------------------------------------


def test_block_mean_is_the_rounded_integer_mean_of_each_block() -> None:
    arr = np.arange(7 * 9, dtype=np.uint16).reshape(7, 9) * 1000
    out = dicom._block_mean(arr, 3)
    assert out.dtype == np.uint16 and out.shape == (3, 3)  # the 7th row is a block of its own
    for i in range(3):
        for j in range(3):
            block = arr[3 * i : 3 * i + 3, 3 * j : 3 * j + 3].astype(np.float64)
            assert out[i, j] == np.floor(block.mean() + 0.5), (i, j)


@pytest.mark.parametrize("shape, factor", [((9, 10), 4), ((16, 16), 4), ((17, 5), 2), ((12, 12), 3)])
def test_block_mean_rounds_full_and_edge_blocks_alike(shape: tuple[int, int], factor: int) -> None:
    arr = np.random.default_rng(1).integers(0, 4096, shape).astype(np.uint16)
    out = dicom._block_mean(arr, factor)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = arr[factor * i : factor * i + factor, factor * j : factor * j + factor].astype(np.float64)
            assert out[i, j] == np.floor(block.mean() + 0.5), (i, j)


@pytest.mark.parametrize("shape, factor", [((1001, 777), 3), ((517, 64), 4), ((2048, 2048), 4)])
def test_tall_images_are_averaged_band_by_band_exactly(shape: tuple[int, int], factor: int) -> None:
    """Many rows of blocks (summed a band at a time, the last band short): the plain rounded mean."""
    arr = np.random.default_rng(2).integers(0, 65536, shape).astype(np.uint16)
    rows, cols = -(-shape[0] // factor) * factor, -(-shape[1] // factor) * factor
    grid = (rows // factor, factor, cols // factor, factor)
    padded = np.zeros((rows, cols)), np.zeros((rows, cols))
    padded[0][: shape[0], : shape[1]], padded[1][: shape[0], : shape[1]] = arr, 1
    sums, counts = (a.reshape(grid).sum(axis=(1, 3)) for a in padded)
    assert shape[0] // factor > 2 * dicom._BAND_BLOCKS
    np.testing.assert_array_equal(dicom._block_mean(arr, factor), np.floor(sums / counts + 0.5))


@pytest.mark.parametrize("shape", [(224, 211), (100, 224), (223, 224), (224, 224)])
def test_pad_square_is_monai_symmetric_padding(shape: tuple[int, int]) -> None:
    from monai.transforms import SpatialPad

    pixels = np.random.default_rng(0).random(shape).astype(np.float32)
    expected = SpatialPad((224, 224), method="symmetric", mode="constant", value=0.0)(pixels[None])
    np.testing.assert_array_equal(pad_square(pixels, 224), np.asarray(expected))


def test_block_mean_does_not_overflow_and_keeps_signed_values() -> None:
    top = np.full((16, 16), 65535, dtype=np.uint16)
    assert (dicom._block_mean(top, 16) == 65535).all()
    signed = np.array([[-3, -2], [-1, 1]], dtype=np.int16)
    assert dicom._block_mean(signed, 2).tolist() == [[-1]]  # -5 / 4 = -1.25 rounds to -1
    floats = np.array([[0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    assert dicom._block_mean(floats, 2).tolist() == [[0.75]]


@pytest.mark.parametrize("bits", [8, 10, 12, 13, 14, 15, 16])
@pytest.mark.parametrize("factor", [2, 3, 4, 5, 8])
def test_block_mean_of_known_bits_sums_in_narrow_types_exactly(bits: int, factor: int) -> None:
    """Bits Stored bounds the values, so sums may run in 16 bits: the same means, even at the top value."""
    top = (1 << bits) - 1
    rng = np.random.default_rng(bits * factor)
    for arr in (
        np.full((67, 61), top, dtype=np.uint16),
        rng.integers(0, top + 1, (300, 141)).astype(np.uint16),
        rng.integers(top - 3, top + 1, (37, 43)).astype(np.uint16),
    ):
        rows, cols = -(-arr.shape[0] // factor) * factor, -(-arr.shape[1] // factor) * factor
        padded = np.zeros((2, rows, cols))
        padded[0, : arr.shape[0], : arr.shape[1]], padded[1, : arr.shape[0], : arr.shape[1]] = arr, 1
        sums, counts = padded.reshape(2, rows // factor, factor, cols // factor, factor).sum(axis=(2, 4))
        expected = np.floor(sums / counts + 0.5)
        np.testing.assert_array_equal(dicom._block_mean(arr, factor, bits=bits), expected)
    assert dicom._accumulator(65535) == np.uint16 and dicom._accumulator(65536) == np.uint32


def test_block_mean_keeps_padding_out_of_the_average() -> None:
    arr = np.full((4, 4), 1000, dtype=np.uint16)
    arr[:2, :2] = 0  # one block all padding
    arr[2, 2] = 0  # one padding pixel in another block
    out = dicom._block_mean(arr, 2, padding=(0, 0))
    assert out.tolist() == [[0, 1000], [1000, 1000]]


def test_uncompressed_rle_and_jpeg_ls_read_reduced_as_block_means(tmp_path: Path) -> None:
    pixels = phantom()
    full = read_image(write(tmp_path / "full.dcm", pixels))
    for syntax in (None, RLELossless, JPEGLSLossless):
        image = read_image(write(tmp_path / f"{syntax}.dcm", pixels, syntax), target_size=SIZE)
        assert image.pixels.shape == (65, 57) and image.reduction == 8  # ceil(520 / 8), ceil(456 / 8)
        assert (image.rows, image.columns) == (520, 456)  # the header's size, not the pixels'
        assert_same_model_input(image, full, mean=0.01)
        if syntax is None:
            uncompressed = image.pixels
        else:  # lossless: the same stored integers, so the same block means
            np.testing.assert_array_equal(image.pixels, uncompressed)


def test_unused_high_bits_are_cleared_before_averaging(tmp_path: Path) -> None:
    pixels = phantom()
    clean = read_image(write(tmp_path / "clean.dcm", pixels), target_size=SIZE).pixels
    dirty = pixels | np.uint16(0xF000)  # an overlay left in bits 12-15 of a 12-bit image
    ds = _dataset(pixels, bits_stored=12)
    ds.PixelData = dirty.tobytes()
    np.testing.assert_array_equal(
        read_image(_save(ds, tmp_path / "dirty.dcm"), target_size=SIZE).pixels, clean
    )


def test_small_images_are_read_at_full_resolution(tmp_path: Path) -> None:
    path = write(tmp_path / "small.dcm", phantom(100, 90))
    image = read_image(path, target_size=SIZE)
    assert image.reduction == 1
    np.testing.assert_array_equal(image.pixels, read_image(path).pixels)


def test_full_and_reduced_reads_take_one_intensity_range(tmp_path: Path) -> None:
    """Both reads take the percentiles from the image at `RANGE_SIDE` scale, so a flat region gets one value.

    A 4 x 4 block mean dilutes the film's bright specks; a histogram of the full image (or of every other
    row) does not.
    """
    path = write(tmp_path / "film.dcm", specked_film())
    full, reduced = read_image(path), read_image(path, target_size=dicom.RANGE_SIDE)
    assert reduced.reduction == 4
    assert full.pixels[150, 150] == reduced.pixels[150 // 4, 150 // 4]
    assert 0.2 < full.pixels[150, 150] < 0.5  # inside the range, where the range's ends move it


def test_the_range_scale_is_the_model_paths_decoding_size() -> None:
    """At the default model size the model path's reduced image is already at the range's scale (no extra pass)."""
    assert dicom.RANGE_SIDE == DECODE_OVERSAMPLING * ModelConfig().image_size


# --- JPEG 2000 at a reduced resolution level ---------------------------------------------------


@pytest.mark.parametrize("name", ["RG1_J2KR.dcm", "RG1_UNCR.dcm"])
def test_rg1_reduced_matches_full_resolution(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real 1955 x 1841 CR film (odd sizes, MONOCHROME1): 8 times smaller, the same model input."""
    j2k = counting(monkeypatch, "_j2k_reduced")
    image = read_image(get_testdata_file(name), target_size=224)
    assert image.reduction == 8 and (image.rows, image.columns) == (1955, 1841)
    assert image.pixels.shape == (245, 231)  # ceil(1955 / 8), ceil(1841 / 8)
    assert bool(j2k) == (name == "RG1_J2KR.dcm")  # openjpeg dropped 3 resolution levels
    full = read_image(get_testdata_file("RG1_UNCR.dcm"))
    assert_same_model_input(image, full, size=224)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEG2000])
def test_j2k_reduce_gives_the_low_pass_image(
    tmp_path: Path, syntax: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    j2k = counting(monkeypatch, "_j2k_reduced")
    pixels = phantom(517, 459)  # odd sizes: Pillow's own `reduce` rounds these wrongly
    path = write(tmp_path / "j2k.dcm", pixels, syntax)
    image = read_image(path, target_size=SIZE)
    assert j2k and j2k[0][1] == 8  # 3 resolution levels dropped
    assert j2k[0][0].shape == (65, 58) and j2k[0][0].dtype == np.uint16  # ceil(517 / 8), ceil(459 / 8)
    assert image.reduction == 8
    low_pass = j2k[0][0].astype(np.float64)
    box = dicom._block_mean(pixels, 8).astype(np.float64)
    assert np.abs(low_pass - box).mean() < 0.02 * 4095  # stored values, not rescaled
    assert_same_model_input(image, read_image(path))


def test_j2k_header_is_parsed() -> None:
    from pydicom import dcmread

    ds = dcmread(get_testdata_file("RG1_J2KR.dcm"))
    frame = dicom.get_frame(ds.PixelData, 0, number_of_frames=1)
    header = dicom._j2k_header(frame)
    assert (header.width, header.height, header.components) == (1841, 1955, 1)
    assert (header.precision, header.signed, header.levels) == (15, False, 5)
    assert dicom._j2k_header(b"\xff\xd8\xff\xe0") is None


def test_signed_j2k_reads_reduced(tmp_path: Path) -> None:
    pixels = phantom().astype(np.int16) - 2048
    ds = _dataset(pixels, bits_stored=12)
    ds.compress(JPEG2000Lossless)
    path = _save(ds, tmp_path / "signed.dcm")
    assert_same_model_input(read_image(path, target_size=SIZE), read_image(path))


# --- JPEG through libjpeg's scaled decode ------------------------------------------------------


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_jpeg_baseline_dicom_uses_draft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drafts = counting(monkeypatch, "_jpeg_draft")
    pixels = (phantom(bits=8)).astype(np.uint8)
    ds = _dataset(pixels, bits_stored=8)
    ds.PixelData = encapsulate([_jpeg_bytes(pixels)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = _save(ds, tmp_path / "jpeg.dcm")
    image = read_image(path, target_size=SIZE)
    assert drafts and drafts[0][1] == 8 and drafts[0][0].shape == (65, 57)  # 1/8 scale, rounded up
    assert image.reduction == 8
    assert_same_model_input(image, read_image(path))


def test_jpeg_picture_uses_draft_and_keeps_the_full_size(tmp_path: Path) -> None:
    pixels = phantom(bits=8).astype(np.uint8)
    path = tmp_path / "film.jpg"
    path.write_bytes(_jpeg_bytes(pixels))
    image = read_image(path, target_size=SIZE)
    assert image.pixels.shape == (65, 57) and image.reduction == 8
    assert (image.rows, image.columns) == (520, 456)
    assert_same_model_input(image, read_image(path))


def test_rotated_jpeg_keeps_its_upright_size(tmp_path: Path) -> None:
    pixels = phantom(bits=8).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif)
    image = read_image(path, target_size=SIZE)
    full = read_image(path)
    assert (image.rows, image.columns) == (full.rows, full.columns) == (456, 520)
    assert image.pixels.shape == (57, 65)
    assert_same_model_input(image, full)


def test_png_is_block_averaged(tmp_path: Path) -> None:
    path = tmp_path / "film.png"
    Image.fromarray(phantom()).save(path)
    image = read_image(path, target_size=SIZE)
    assert image.pixels.shape == (65, 57) and image.reduction == 8
    assert_same_model_input(image, read_image(path))


def test_a_colour_export_reads_as_its_grey_twin_at_every_scale(tmp_path: Path) -> None:
    """An RGB export of a grey film (as PACS viewers often save one) gives the grey picture's pixels, full
    and reduced: the same 8-bit grey levels, so the same range (before: 0.04 apart in the demo model's
    probabilities on RG1 saved as an RGB JPEG)."""
    pixels = (specked_film(seed=2) >> 4).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "colour.png")
    for target in (None, dicom.RANGE_SIDE):
        grey = read_image(tmp_path / "grey.png", target_size=target)
        colour = read_image(tmp_path / "colour.png", target_size=target)
        np.testing.assert_array_equal(colour.pixels, grey.pixels)
        assert colour.reduction == grey.reduction == (1 if target is None else 4)
        assert any("converted to grey" in note for note in colour.warnings)


def test_deep_pixels_take_their_range_at_the_same_scale(tmp_path: Path) -> None:
    """The path for 32-bit and float data (and colour DICOM) reads its percentiles from block means too."""
    pixels = specked_film(seed=3).astype(np.uint32) * 1000
    ds = _dataset()  # pydicom's set_pixel_data stops at 16 bits
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = pixels.tobytes()
    path = _save(ds, tmp_path / "deep.dcm")
    full = read_image(path)
    reduced = read_image(path, target_size=dicom.RANGE_SIDE)
    assert reduced.reduction == 4
    assert abs(float(full.pixels[150, 150]) - float(reduced.pixels[150 // 4, 150 // 4])) < 1e-4


# --- resizing a reduced image as its original ----------------------------------------------------


@pytest.mark.parametrize("shape", [(1955, 1841), (517, 459), (300, 1000), (100, 60)])
def test_resize_reduced_is_monai_area_resize_of_the_full_image(shape: tuple[int, int]) -> None:
    """With uniform blocks the reduced path is exact: the same numbers as MONAI's resize of the original."""
    rng = np.random.default_rng(0)
    for reduction in (1, 3, 4):
        blocks = rng.random((-(-shape[0] // reduction), -(-shape[1] // reduction))).astype(np.float32)
        full = np.kron(blocks, np.ones((reduction, reduction), np.float32))[: shape[0], : shape[1]]
        config = ModelConfig.tiny(image_size=64)
        expected = np.asarray(preprocess_transform(config)(full[None]))  # MONAI's, whatever the size
        got = preprocess(blocks, config, full_size=shape, reduction=reduction) if reduction > 1 else None
        if got is not None:
            np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(
        resize_reduced(full, shape, 1, 64),
        expected[0][
            tuple(slice((64 - n) // 2, (64 - n) // 2 + n) for n in resize_reduced(full, shape, 1, 64).shape)
        ],
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "shape", [(895, 700), (512, 512), (424, 398), (225, 223), (150, 120), (64, 300), (299, 1)]
)
def test_small_images_take_a_numpy_resize_with_monais_numbers(
    shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below 4 x the model size (the model path's inputs, smaller films and JPEG exports) the resize is
    ours, faster there; it gives MONAI's numbers, upsampling included. Larger images take MONAI's."""
    config = ModelConfig()
    pixels = np.random.default_rng(shape[0]).random(shape).astype(np.float32)
    monai = np.asarray(preprocess_transform(config)(pixels[None]))
    ours = counting(monkeypatch, "resize_reduced", module=transforms)
    out = preprocess(pixels, config)
    assert len(ours) == 1 and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out, monai, atol=1e-6)
    big = np.zeros((4 * 224, 100), np.float32)
    preprocess(big, config)
    assert len(ours) == 1  # MONAI's resize from 4 x the model size on


def test_a_reduced_image_needs_its_full_size() -> None:
    with pytest.raises(ValueError, match="full image"):
        preprocess(np.zeros((10, 10), np.float32), ModelConfig.tiny(), reduction=2)


# --- bad files behave as at full resolution ----------------------------------------------------


def test_every_bad_file_fails_or_reads_as_at_full_resolution(tmp_path: Path) -> None:
    """The corpus (80 x 96 images) read with target 32: the same ImageError, or a readable image."""
    cases: list[BadCase] = make_bad_corpus(tmp_path)
    for case in cases:
        if case.reads:
            image = read_image(case.path, target_size=32)
            assert image.pixels.dtype == np.float32 and 0 <= image.pixels.min() <= image.pixels.max() <= 1
            assert max(image.pixels.shape) >= 32, case.name
            continue
        with pytest.raises(ImageError) as info:
            read_image(case.path, target_size=32)
        assert type(info.value) is case.expected, case.name


def test_damaged_j2k_falls_back_to_the_full_decoder_for_its_message(tmp_path: Path) -> None:
    ds = _dataset(phantom())
    ds.compress(JPEG2000Lossless)
    frame = bytearray(dicom.get_frame(ds.PixelData, 0, number_of_frames=1))
    frame = frame[: len(frame) // 3]  # the codestream cut short
    ds.PixelData = encapsulate([bytes(frame)])
    path = _save(ds, tmp_path / "cut.dcm")
    with pytest.raises(ImageError) as reduced:
        read_image(path, target_size=SIZE)
    with pytest.raises(ImageError) as full:
        read_image(path)
    assert type(reduced.value) is type(full.value) and reduced.value.reason == full.value.reason


def test_target_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        read_image(get_testdata_file("RG1_UNCR.dcm"), target_size=0)


# --- the model path ----------------------------------------------------------------------------


def test_cache_key_says_whether_pixels_were_reduced(tmp_path: Path) -> None:
    path = write(tmp_path / "a.dcm", phantom(100, 90))
    config = ModelConfig.tiny(image_size=SIZE)
    reduced = ImageCache(tmp_path / "cache", config).key(path)
    assert reduced == ImageCache(tmp_path / "cache", config, reduced=True).key(path)
    assert reduced != ImageCache(tmp_path / "cache", config, reduced=False).key(path)


def _probabilities(predictor: Predictor, studies, *, reduced: bool) -> np.ndarray:
    dataset = StudyDataset(studies, config=predictor.config, reduced=reduced)
    rows = []
    for start in range(0, len(dataset), 16):
        batch = collate([dataset[i] for i in range(start, min(start + 16, len(dataset)))])
        out = predictor.predict_batch(batch)
        rows.append(torch.stack([out.frontal, out.lateral, out.joint, out.final]).numpy())
    return np.concatenate(rows, axis=1)


@pytest.mark.slow
def test_demo_model_probabilities_match_full_resolution(tmp_path: Path) -> None:
    """Sample studies, RG1 and the real development films: reduced within 0.02 of full resolution."""
    predictor = Predictor(load_model()[0], device="cpu", fast=False)
    rg1 = tmp_path / "rg1"
    rg1.mkdir()
    (rg1 / "RG1_J2KR.dcm").write_bytes(Path(get_testdata_file("RG1_J2KR.dcm")).read_bytes())
    folders = [SAMPLE_STUDIES, rg1] + ([REAL_DEV] if REAL_DEV.is_dir() else [])
    for folder in folders:
        studies = scan_folder(folder).studies
        assert studies, folder
        reduced = _probabilities(predictor, studies, reduced=True)
        full = _probabilities(predictor, studies, reduced=False)
        known = ~np.isnan(full)
        assert (np.isnan(reduced) == ~known).all()
        worst = np.abs(reduced[known] - full[known]).max()
        assert worst <= PROBABILITY_TOLERANCE, f"{folder}: max |reduced - full| = {worst:.4f}"
