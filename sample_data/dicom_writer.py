"""Write one rendered radiograph as a valid CR or DX (For Presentation) DICOM file.

Everything comes from the ``DicomImage`` passed in: no clock, no random UIDs, so the same input
gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

__all__ = [
    "COMPRESSIONS",
    "CR_STORAGE",
    "DX_STORAGE",
    "DicomImage",
    "DicomWriteError",
    "write_image",
]

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
COMPRESSIONS = {
    "none": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
_ORIENTATION = {"PA": ("L", "F"), "AP": ("L", "F"), "LL": ("P", "F"), None: ("L", "F")}


class DicomWriteError(ValueError):
    """The image or its description cannot be written as asked."""


@dataclass(frozen=True)
class DicomImage:
    """One image and everything its DICOM header says."""

    pixels: np.ndarray  # float32 [0, 1], bright = dense
    pixel_spacing_mm: float
    patient_id: str
    patient_name: str
    patient_sex: str
    birth_date: str  # YYYYMMDD
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    study_time: str
    accession: str
    series_number: int
    instance_number: int
    view: str  # "frontal" or "lateral" (decides the orientation even when ViewPosition is left out)
    view_position: str | None  # "PA", "AP", "LL" or None for no ViewPosition tag (DX only)
    modality: str = "DX"  # "CR" or "DX"
    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    compression: str = "none"
    series_description: str = ""
    patient_orientation: tuple[str, str] | None = None  # default: from the view (a lateral facing left)
    burned_in: bool = False  # text or markers are part of the pixels


def write_image(path: str | Path, image: DicomImage) -> Path:
    """Write ``image`` to ``path`` (parents created) and return the path."""
    if image.modality not in ("CR", "DX"):
        raise DicomWriteError(f"unknown modality '{image.modality}'; choose one of: CR, DX")
    if image.compression not in COMPRESSIONS:
        raise DicomWriteError(
            f"unknown compression '{image.compression}'; choose one of: {', '.join(COMPRESSIONS)}"
        )
    if image.view_position is None and image.modality == "CR":
        raise DicomWriteError("CR requires ViewPosition (type 2); write a DX to leave it out")
    if not 8 < image.bits_stored <= 16:
        raise DicomWriteError(f"bits_stored must be 9..16, got {image.bits_stored}")
    ds = _dataset(image)
    if image.compression != "none":
        ds.compress(
            COMPRESSIONS[image.compression],
            encoding_plugin=_plugin(image.compression),
            generate_instance_uid=False,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _plugin(compression: str) -> str:
    return {"rle": "pydicom", "jpeg-ls": "pyjpegls", "jpeg2000": "pylibjpeg"}[compression]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _dataset(im: DicomImage) -> Dataset:
    top = (1 << im.bits_stored) - 1
    values = np.clip(np.rint(np.asarray(im.pixels, np.float64) * top), 0, top).astype(np.uint16)
    if im.photometric == "MONOCHROME1":
        values = (top - values).astype(np.uint16)
    sop_class = DX_STORAGE if im.modality == "DX" else CR_STORAGE

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = im.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "TWOVIEW_PHANTOM"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if im.modality == "DX" else ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = im.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = im.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = im.study_time
    ds.AccessionNumber = im.accession
    ds.Modality = im.modality
    ds.Manufacturer = "twoview"
    ds.InstitutionName = "twoview synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST"
    ds.SeriesDescription = im.series_description
    ds.ManufacturerModelName = "phantom"
    ds.PatientName = im.patient_name
    ds.PatientID = im.patient_id
    ds.PatientBirthDate = im.birth_date
    ds.PatientSex = im.patient_sex
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom, no real patient"
    ds.BodyPartExamined = "CHEST"
    ds.SoftwareVersions = "twoview sample_data"
    ds.StudyInstanceUID = im.study_uid
    ds.SeriesInstanceUID = im.series_uid
    ds.StudyID = im.accession[-8:]
    ds.SeriesNumber = im.series_number
    ds.InstanceNumber = im.instance_number
    default = _ORIENTATION[im.view_position if im.view == "frontal" else "LL"]
    ds.PatientOrientation = list(im.patient_orientation or default)
    if im.view_position is not None or im.modality == "CR":
        ds.ViewPosition = im.view_position or ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = im.photometric
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated = 16
    ds.BitsStored = im.bits_stored
    ds.HighBit = im.bits_stored - 1
    ds.PixelRepresentation = 0
    spacing = [f"{im.pixel_spacing_mm:.6f}".rstrip("0"), f"{im.pixel_spacing_mm:.6f}".rstrip("0")]
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "synthetic phantom, parallel projection"
    ds.WindowCenter = str(top // 2 + 1)
    ds.WindowWidth = str(top + 1)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "YES" if im.burned_in else "NO"
    ds.PresentationLUTShape = "INVERSE" if im.photometric == "MONOCHROME1" else "IDENTITY"
    if im.modality == "DX":
        _dx_modules(ds, im)
    ds.PixelData = values.tobytes()
    return ds


def _dx_modules(ds: Dataset, im: DicomImage) -> None:
    """The DX Series, Anatomy, Image, Detector and Acquisition Context attributes of type 1 and 2."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
    ds.DetectorType = "SCINTILLATOR"
    ds.AcquisitionContextSequence = Sequence([])
    ds.PositionerType = "COLUMN"
    ds.KVP = "120"
    ds.DistanceSourceToDetector = "1800"
