"""One study's prediction as a DICOM Structured Report (TID 1500 in a Comprehensive SR), and reading one back.

Each label is a measurement group: the finding (SNOMED CT where a code exists, else the local scheme
`99TWOVIEW`), its probabilities (UCUM unit `1`) told apart by their measurement method (the final
one, each head's), the decision threshold, the call as a qualitative evaluation (present/absent), the
route as the group's method and the model as algorithm and device observer. The source images are the
evidence and the image library: same study, a series of its own, their SOP Instance UIDs referenced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom import Dataset
from pydicom.sr.codedict import codes

from models.config import ModelConfig
from models.names import HEADS
from pipeline.errors import TwoviewError
from pipeline.records import StudyPrediction

__all__ = [
    "FINDING_CODES",
    "LOCAL_SCHEME",
    "NOT_FOR_DIAGNOSIS",
    "ModelIdentity",
    "ReportedStudy",
    "SRError",
    "build_sr",
    "derived_uid",
    "finding_code",
    "read_sr",
]


class SRError(TwoviewError):
    """A structured report that cannot be built or read back as twoview's."""


#: The coding scheme of what SNOMED CT and DICOM have no code for (heads, routes, other labels).
LOCAL_SCHEME = "99TWOVIEW"
#: The phantom labels' findings in SNOMED CT.
FINDING_CODES: dict[str, CodedConcept] = {
    "pleural_effusion": CodedConcept("60046008", "SCT", "Pleural effusion"),
    "nodule": CodedConcept("786838002", "SCT", "Nodule of lung"),
    "cardiomegaly": CodedConcept("8186001", "SCT", "Cardiomegaly"),
    "pneumothorax": CodedConcept("36118008", "SCT", "Pneumothorax"),
    "consolidation": CodedConcept("95436008", "SCT", "Lung consolidation"),
}
#: What every twoview DICOM object says about its use.
NOT_FOR_DIAGNOSIS = "twoview AI output for research and quality work: not for diagnosis."
SERIES_DESCRIPTION = "twoview AI findings (not for diagnosis)"
SYNTHETIC_SERIES_DESCRIPTION = "twoview AI findings, phantom-only model (not for diagnosis)"
SR_SERIES_NUMBER = 990

_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
_CHEST = CodedConcept("51185008", "SCT", "Chest")
_PRESENT, _ABSENT = codes.SCT.Present, codes.SCT.Absent
_PROBABILITY = codes.DCM.Probability
_UNITLESS = codes.UCUM.NoUnits
_COMMENT = codes.DCM.Comment
_QUALITATIVE = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_THRESHOLD = CodedConcept("THRESHOLD", LOCAL_SCHEME, "Decision threshold")
_METHODS: dict[str, CodedConcept] = {
    "final": CodedConcept("FINAL", LOCAL_SCHEME, "Final probability (from the route's head)"),
    "frontal": CodedConcept("HEAD-FRONTAL", LOCAL_SCHEME, "Frontal-view head"),
    "lateral": CodedConcept("HEAD-LATERAL", LOCAL_SCHEME, "Lateral-view head"),
    "joint": CodedConcept("HEAD-JOINT", LOCAL_SCHEME, "Joint two-view head"),
}
_ROUTES: dict[str, CodedConcept] = {
    "joint": CodedConcept("ROUTE-JOINT", LOCAL_SCHEME, "Route: joint head, frontal and lateral views"),
    "frontal": CodedConcept("ROUTE-FRONTAL", LOCAL_SCHEME, "Route: frontal view only"),
    "lateral": CodedConcept("ROUTE-LATERAL", LOCAL_SCHEME, "Route: lateral view only"),
}


def finding_code(label: str) -> CodedConcept:
    """The SNOMED CT code of a phantom label; any other label in the local scheme under its own name."""
    if label in FINDING_CODES:
        return FINDING_CODES[label]
    return CodedConcept(label, LOCAL_SCHEME, label.replace("_", " "))


def derived_uid(*parts: str) -> str:
    """A UID that is the same for the same parts (`2.25.` + 128 bits of SHA-256): reruns overwrite, never duplicate."""
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"


def _software() -> str:
    try:
        return f"twoview {version('twoview')}"
    except PackageNotFoundError:
        return "twoview (not installed)"


@dataclass(frozen=True)
class ModelIdentity:
    """The model as DICOM names it: algorithm name and version, and a device observer UID from its digest."""

    name: str  # the checkpoint's file name without suffix
    sha256: str  # of the checkpoint file (or of the config, for a model never saved)
    trained_on: str = ""
    notice: str | None = None  # the synthetic-only sentence, if any
    software: str = field(default_factory=_software)

    @property
    def version(self) -> str:
        """The model's version: its digest, which changes whenever a weight does."""
        return f"sha256:{self.sha256[:16]}"

    @property
    def uid(self) -> str:
        return f"2.25.{int(self.sha256[:32], 16)}"

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: ModelConfig) -> ModelIdentity:
        path = Path(path)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return cls(path.stem, digest.hexdigest(), config.trained_on, config.notice)

    @classmethod
    def from_config(cls, config: ModelConfig, name: str = "unsaved") -> ModelIdentity:
        """For a model held in memory only: the digest is the config's, so it names the settings, not the weights."""
        digest = hashlib.sha256(config.to_json().encode()).hexdigest()
        return cls(name, digest, config.trained_on, config.notice)

    def algorithm(self) -> hd.sr.AlgorithmIdentification:
        parameters = [self.software, f"checkpoint sha256 {self.sha256}"]
        if self.trained_on:
            parameters.append(f"trained on: {self.trained_on}")
        return hd.sr.AlgorithmIdentification(
            name=self.name, version=self.version, parameters=parameters, manufacturer="twoview"
        )

    def observer(self) -> hd.sr.ObserverContext:
        return hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=self.uid,
                name=f"twoview {self.name}"[:64],
                manufacturer_name="twoview",
                model_name=self.name[:64],
                serial_number=self.sha256[:16],
            ),
        )


def build_sr(
    prediction: StudyPrediction,
    sources: Sequence[Dataset],
    model: ModelIdentity,
    thresholds: Mapping[str, float],
    *,
    series_uid: str,
    sop_uid: str,
) -> hd.sr.ComprehensiveSR:
    """The SR of one predicted study; `sources` are the headers of the images it used (one study)."""
    if not prediction.ok:
        raise SRError(f"study {prediction.study_id}: no prediction to report (no view could be read)")
    if not sources or len({str(s.StudyInstanceUID) for s in sources}) != 1:
        raise SRError(f"study {prediction.study_id}: the source images must be DICOM files of one study")
    algorithm = model.algorithm()
    groups = [
        _group(label, prediction, thresholds, algorithm, derived_uid(sop_uid, label))
        for label in prediction.final
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=model.observer()),
        procedure_reported=_CHEST_XRAY,
        imaging_measurements=groups,
        referenced_images=[s for s in sources if _describable(s)] or None,
    )
    root = report[0]
    root.ContentSequence.append(_comments([NOT_FOR_DIAGNOSIS, *([model.notice] if model.notice else [])]))
    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources),
        content=root,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="twoview",
        is_complete=True,
        series_description=SYNTHETIC_SERIES_DESCRIPTION if model.notice else SERIES_DESCRIPTION,
    )
    sr.CodingSchemeIdentificationSequence = [_local_scheme()]
    return sr


def _group(
    label: str,
    prediction: StudyPrediction,
    thresholds: Mapping[str, float],
    algorithm: hd.sr.AlgorithmIdentification,
    tracking_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One label: its probabilities (final, then each head that ran), threshold and call, under the route."""
    finding = finding_code(label)
    measurements = [
        hd.sr.Measurement(
            name=_PROBABILITY,
            value=float(value),
            unit=_UNITLESS,
            method=_METHODS[head],
        )
        for head in ("final", *HEADS)
        if (value := prediction.head(head)[label]) is not None
    ]
    evaluations = []
    if label in thresholds:
        measurements.append(
            hd.sr.Measurement(name=_THRESHOLD, value=float(thresholds[label]), unit=_UNITLESS)
        )
        if prediction.calls.get(label) is not None:
            call = _PRESENT if prediction.calls[label] else _ABSENT
            evaluations.append(hd.sr.QualitativeEvaluation(name=finding, value=call))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=label),
        finding_type=finding,
        method=_ROUTES[prediction.route],
        algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(_CHEST)],
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def _describable(source: Dataset) -> bool:
    """Whether highdicom can describe the image in the image library (radiographs need orientation and spacing).

    Every source is referenced as evidence either way; the library only adds descriptions.
    """
    radiograph = str(source.get("Modality", "")) in ("CR", "DX", "RG", "DR", "MG", "IO", "PX", "RF", "XA")
    return not radiograph or ("PatientOrientation" in source and "ImagerPixelSpacing" in source)


def _comments(lines: Sequence[str]) -> hd.sr.ContainerContentItem:
    """TID 1500's root "Qualitative Evaluations" container holding free-text comments."""
    container = hd.sr.ContainerContentItem(
        name=_QUALITATIVE, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = [
        hd.sr.TextContentItem(
            name=_COMMENT, value=line, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        for line in lines
    ]
    return container


def _local_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "twoview local codes"
    item.CodingSchemeResponsibleOrganization = "twoview"
    return item


@dataclass(frozen=True)
class ReportedStudy:
    """What a twoview SR says, read back: the study, the images referenced, the model and every number."""

    study_uid: str
    series_uid: str
    sop_uid: str
    series_description: str
    referenced_sop_uids: tuple[str, ...]
    model_name: str
    model_version: str
    route: str
    final: dict[str, float]
    heads: dict[str, dict[str, float]]  # head -> label -> probability (heads that ran)
    thresholds: dict[str, float]
    calls: dict[str, int]
    comments: tuple[str, ...]


def read_sr(source: str | Path | Dataset) -> ReportedStudy:
    """Read a twoview SR (a file or a dataset) back through highdicom into plain numbers."""
    try:
        sr = (
            hd.sr.srread(source)
            if not isinstance(source, Dataset)
            else hd.sr.ComprehensiveSR.from_dataset(source)
        )
        report = sr.content
        groups = report.get_image_measurement_groups()
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise SRError(
            f"{source if not isinstance(source, Dataset) else 'dataset'}: not a readable SR ({err})"
        ) from err
    final, thresholds, calls, routes = {}, {}, {}, set()
    heads: dict[str, dict[str, float]] = {head: {} for head in HEADS}
    model_name = model_version = ""
    codes_to_head = {code.value: head for head, code in _METHODS.items()}
    for group in groups:
        label = group.tracking_identifier
        routes.add(next(r for r, code in _ROUTES.items() if code == group.method))
        for m in group.get_measurements():
            if m.name == _THRESHOLD:
                thresholds[label] = m.value
                continue
            head = codes_to_head[m.method.value]
            (final if head == "final" else heads[head])[label] = m.value
        for q in group.get_qualitative_evaluations():
            calls[label] = int(q.value == _PRESENT)
        model_name, model_version = _algorithm(group)
    if len(routes) != 1:
        raise SRError(f"the SR names {len(routes)} routes; a twoview SR names one")
    referenced = tuple(
        str(sop.ReferencedSOPInstanceUID)
        for item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    )
    return ReportedStudy(
        study_uid=str(sr.StudyInstanceUID),
        series_uid=str(sr.SeriesInstanceUID),
        sop_uid=str(sr.SOPInstanceUID),
        series_description=str(sr.get("SeriesDescription", "")),
        referenced_sop_uids=referenced,
        model_name=model_name,
        model_version=model_version,
        route=routes.pop(),
        final=final,
        heads={head: values for head, values in heads.items() if values},
        thresholds=thresholds,
        calls=calls,
        comments=_read_comments(sr),
    )


def _algorithm(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> tuple[str, str]:
    """The algorithm name and version a measurement group names."""
    found = {}
    for item in group[0].ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeValue
        if name in ("111001", "111003"):  # DCM Algorithm Name, Algorithm Version
            found[name] = str(item.TextValue)
    return found.get("111001", ""), found.get("111003", "")


def _read_comments(sr: Dataset) -> tuple[str, ...]:
    for item in sr.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == _QUALITATIVE.value:
            return tuple(str(text.TextValue) for text in item.ContentSequence)
    return ()
