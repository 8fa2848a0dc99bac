"""Fixtures for pipeline tests: tiny CR DICOM and PNG writers, and small two-view studies on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.config import ModelConfig

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def frontal_pixels(rows: int = 64, cols: int = 64, seed: int = 0) -> np.ndarray:
    """A left-right symmetric 12-bit picture with texture (frontal-looking)."""
    rng = np.random.default_rng(seed)
    half = rng.integers(200, 4000, size=(rows, (cols + 1) // 2), dtype=np.uint16)
    return np.concatenate([half, half[:, ::-1]], axis=1)[:, :cols]


def write_dicom(
    path: str | Path,
    *,
    study_uid: str = "1.2.3.1",
    view_position: str | None = "PA",
    pixels: np.ndarray | None = None,
    rows: int = 64,
    cols: int = 64,
    body_part: str | None = "CHEST",
    patient_id: str = "P1",
    modality: str = "CR",
    sop_uid: str | None = None,
    seed: int = 0,
) -> Path:
    """Write a small uncompressed MONOCHROME2 DICOM; None for a tag leaves it out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = frontal_pixels(rows, cols, seed)
    pixels = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view_position is not None:
        ds.ViewPosition = view_position
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: str | Path, pixels: np.ndarray | None = None, size: tuple[int, int] = (64, 64)) -> Path:
    """Write an 8-bit grey PNG (random texture unless pixels are given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = np.random.default_rng(1).integers(0, 256, size=size, dtype=np.uint8)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def dicom_writer() -> Callable[..., Path]:
    return write_dicom


@pytest.fixture
def png_writer() -> Callable[..., Path]:
    return write_png


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig.tiny(labels=("effusion", "nodule"))


@pytest.fixture(scope="session")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 phantom studies from `sample_data` (64 px; two-view, single-view, compressed, an extra frontal)."""
    from sample_data.generate import write_dataset

    out = tmp_path_factory.mktemp("phantom")
    write_dataset(out, 12, seed=0, size=64)
    return out


@pytest.fixture
def study_folder(tmp_path: Path) -> Path:
    """Three studies: 1.2.1 frontal+lateral, 1.2.2 frontal only, 1.2.3 lateral only (nested, some without extension)."""
    root = tmp_path / "scan"
    write_dicom(root / "p1" / "s1" / "pa", study_uid="1.2.1", view_position="PA", patient_id="P1", seed=1)
    write_dicom(
        root / "p1" / "s1" / "lat.dcm", study_uid="1.2.1", view_position="LL", patient_id="P1", seed=2
    )
    write_dicom(root / "p2" / "img.bin", study_uid="1.2.2", view_position="AP", patient_id="P2", seed=3)
    write_dicom(
        root / "p3" / "deep" / "er" / "x", study_uid="1.2.3", view_position="LATERAL", patient_id="P3"
    )
    return root


def phantom_film(view: str, seed: int = 5) -> np.ndarray:
    """A 12-bit phantom film of `view` ("frontal" or "lateral") from a patient training never saw."""
    from sample_data.anatomy import random_patient
    from sample_data.phantom import simulate

    films = simulate(random_patient(np.random.default_rng([seed, 77])), size=192, views=(view,))
    return np.round(getattr(films, view) * 4000).astype(np.uint16)
