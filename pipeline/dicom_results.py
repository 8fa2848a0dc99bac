"""`twoview predict --dicom-out DIR`: per predicted study a DICOM SR (and, on request, Grad-CAM captures) as files.

A sink of `predict_folder`: it gets each batch's predictions before their rows are written, so a study
in the output always has its SR on disk. Files are named by the study (`<study>.sr.dcm`,
`<study>.gradcam.<label>.<view>.dcm`) and their UIDs derive from the study and the model, so a rerun
rewrites the same objects instead of adding new ones. Only what the SR needs is copied from the source
headers; with a `Deidentifier` UIDs, Patient ID and name become keyed pseudonyms and dates are left out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from models.atomic import atomic_path
from pipeline.deidentify import Deidentifier
from pipeline.dicom import read_image
from pipeline.errors import ImageError, TwoviewError
from pipeline.explain import Explainer
from pipeline.heatmap_sc import heatmap_capture
from pipeline.records import StudyPrediction
from pipeline.sr import ModelIdentity, SRError, build_sr, derived_uid
from pipeline.views import View

__all__ = ["DicomResults", "source_header"]

logger = logging.getLogger(__name__)

#: What the SR and the captures copy from a source image header (patient, study, series, instance, size).
_KEPT = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
    "Rows", "Columns", "ViewPosition", "ImageLaterality", "PatientOrientation", "ImagerPixelSpacing",
    "Manufacturer", "ManufacturerModelName",
)  # fmt: skip
#: Emptied by de-identification (Type 2: present, blank) or dropped.
_BLANKED = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber")
_DROPPED = ("ReferringPhysicianName", "StudyDescription", "Manufacturer", "ManufacturerModelName")
_UIDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_METHOD = "twoview keyed pseudonyms (HMAC-SHA256); dates removed"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def source_header(ds: Dataset, deidentify: Deidentifier | None = None) -> Dataset:
    """The attributes of a source image the SR copies; with `deidentify`, pseudonyms and no dates."""
    out = Dataset()
    for keyword in _KEPT:
        if keyword in ds:
            setattr(out, keyword, ds.data_element(keyword).value)
    out.setdefault("PatientName", "")
    if deidentify is None:
        return out
    for keyword in _UIDS:
        setattr(out, keyword, deidentify.uid(str(out.get(keyword, ""))))
    pseudonym = deidentify.patient_id(str(out.get("PatientID", "")))
    out.PatientID = pseudonym
    out.PatientName = f"{pseudonym}^" if pseudonym else ""  # a family name alone
    for keyword in _BLANKED:
        setattr(out, keyword, "")
    for keyword in _DROPPED:
        if keyword in out:
            delattr(out, keyword)
    _mark_deidentified(out)
    return out


def _mark_deidentified(ds: Dataset) -> None:
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = _METHOD


class DicomResults:
    """Writes each predicted study's SR (and Grad-CAM captures of positive calls, given an explainer) into `folder`."""

    def __init__(
        self,
        folder: str | Path,
        model: ModelIdentity,
        thresholds: Mapping[str, float],
        *,
        deidentify: Deidentifier | None = None,
        explainer: Explainer | None = None,
    ) -> None:
        if deidentify is not None and explainer is not None:
            raise TwoviewError(
                "--dicom-heatmaps copies the radiographs' pixels, which may show burned-in names, and twoview "
                "does not de-identify pixels: drop --dicom-heatmaps or --deidentify"
            )
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.thresholds = dict(thresholds)
        self.deidentify = deidentify
        self.explainer = explainer
        self.studies = 0  # studies given an SR in this run
        self._not_dicom = 0

    def key(self, study_id: str) -> str:
        """The file-name stem of a study's objects: the study id, or its pseudonym when de-identifying."""
        name = self.deidentify.study_id(study_id) if self.deidentify is not None else study_id
        return _UNSAFE.sub("_", name)

    def files(self, study_id: str) -> list[Path]:
        """Every object on disk for a study (from this run or an earlier one)."""
        return sorted(self.folder.glob(f"{self.key(study_id)}.*.dcm"))

    def write(self, predictions: Sequence[StudyPrediction]) -> None:
        """Write the objects of every predicted study of a batch (studies that failed get none)."""
        for prediction in predictions:
            if prediction.ok and self._study(prediction):
                self.studies += 1

    def _study(self, prediction: StudyPrediction) -> list[Path]:
        used = {View.FRONTAL: prediction.frontal_file, View.LATERAL: prediction.lateral_file}
        headers = {view: self._header(path) for view, path in used.items() if path is not None}
        if not headers or any(h is None for h in headers.values()):
            self._not_dicom += 1
            if self._not_dicom == 1:
                logger.warning(
                    "study %s: its images are not DICOM files, so it gets no SR (only DICOM studies do)",
                    prediction.study_id,
                )
            return []
        sources = [headers[v] for v in (View.FRONTAL, View.LATERAL) if v in headers]
        study_uid = str(sources[0].StudyInstanceUID)
        try:
            sr = build_sr(
                prediction,
                sources,
                self.model,
                self.thresholds,
                series_uid=derived_uid("sr-series", self.model.sha256, study_uid),
                sop_uid=derived_uid("sr", self.model.sha256, study_uid),
            )
        except (SRError, ValueError, TypeError, AttributeError) as err:  # highdicom refusing an odd header
            logger.warning(
                "study %s: no SR, its image headers do not allow one (%s)", prediction.study_id, err
            )
            return []
        stem = self.key(prediction.study_id)
        paths = [self._save(sr, self.folder / f"{stem}.sr.dcm")]
        if self.explainer is not None:
            paths += self._captures(prediction, used, headers, stem, study_uid)
        return paths

    def _captures(
        self,
        prediction: StudyPrediction,
        used: dict[View, Path | None],
        headers: dict[View, Dataset],
        stem: str,
        study_uid: str,
    ) -> list[Path]:
        positive = [label for label, call in prediction.calls.items() if call == 1]
        if not positive:
            return []
        try:
            images = {v: None if p is None else read_image(p).pixels for v, p in used.items()}
        except ImageError as err:
            logger.warning("study %s: no Grad-CAM captures, an image cannot be read again (%s)", stem, err)
            return []
        series = derived_uid("gradcam-series", self.model.sha256, study_uid)
        paths, number = [], 0
        for label in positive:
            for view in (v for v in (View.FRONTAL, View.LATERAL) if images[v] is not None):
                number += 1
                sc = heatmap_capture(
                    self.explainer,
                    view,
                    label,
                    images,
                    headers[view],
                    series_uid=series,
                    sop_uid=derived_uid("gradcam", self.model.sha256, study_uid, label, view.value),
                    instance_number=number,
                )
                paths.append(self._save(sc, self.folder / f"{stem}.gradcam.{label}.{view.value}.dcm"))
        return paths

    def _header(self, path: Path) -> Dataset | None:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            return None
        if "StudyInstanceUID" not in ds or "SOPInstanceUID" not in ds:
            return None
        return source_header(ds, self.deidentify)

    def _save(self, ds: Dataset, path: Path) -> Path:
        if self.deidentify is not None:
            _mark_deidentified(ds)
        try:
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        except OSError as err:
            raise TwoviewError(f"{path}: cannot write the DICOM result ({err.strerror or err})") from err
        return path
