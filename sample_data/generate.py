"""Write a synthetic dataset: DICOM studies laid out like a PACS export, plus labels.csv and truth.csv.

The first studies of every dataset are a fixed showcase (lateral-only findings, each compression,
MONOCHROME1, no ViewPosition, AP, an extra frontal); the rest are drawn at random. Every study also
draws an ``Exam`` (AP/PA, rotation, arms, devices, film look: ``sample_data.variants``), recorded in
truth.csv with the patient's habitus and each finding's density and subtlety. Same seed, same bytes.

The committed set is ``python -m sample_data --out sample_data/studies --studies 24 --seed 0 --size 448``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from sample_data.anatomy import Patient, random_patient
from sample_data.dicom_writer import DicomImage, write_image
from sample_data.findings import LABELS, Finding, random_findings
from sample_data.phantom import Radiographs, simulate
from sample_data.variants import Exam, exam_columns, random_exam

__all__ = [
    "LABELS_HEADER",
    "DatasetSummary",
    "GenerateError",
    "write_dataset",
]

LABELS_HEADER = ("study_id", "patient_id", "frontal", "lateral", *LABELS)
TRUTH_HEADER = (
    "study_id",
    "patient_id",
    "route",
    "finding",
    "present",
    "severity",
    "site",
    "size",
    "visible_frontal",
    "visible_lateral",
    "contrast_frontal",
    "contrast_lateral",
    "density",
    "subtlety",
    "habitus",
    "sex",
    "scoliosis_deg",
    *exam_columns(Exam()),
)
_ROOT_UID = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses by default


class GenerateError(ValueError):
    """Bad arguments to ``write_dataset``."""


@dataclass(frozen=True)
class _Plan:
    """How one study is written: which views, which findings, and the file-level oddities."""

    route: str  # "two_view", "frontal_only", "lateral_only"
    findings: tuple[Finding, ...] = ()
    photometric: str = "MONOCHROME2"
    compression: str = "none"
    view_position: str | None = "PA"  # of the frontal ("AP" forces an AP exam); None leaves the tag out
    extra_frontal: bool = False
    exam: tuple[tuple[str, object], ...] = ()  # exam fields fixed for a showcase study


_CLEAN_PA = (("projection", "PA"), ("rotation_deg", 0.0))  # so the lateral-only findings stay hidden

_SHOWCASE = (
    _Plan("two_view", (Finding("pleural_effusion", 0.12, "left"),), exam=_CLEAN_PA),  # ~50 mL: lateral only
    _Plan("two_view", (Finding("nodule", 0.15, "retrocardiac"),), exam=_CLEAN_PA),  # ~14 mm: lateral only
    _Plan("two_view", (Finding("cardiomegaly", 0.6, "heart"),)),
    _Plan("two_view", (Finding("pneumothorax", 0.6, "right"),)),
    _Plan("two_view", (Finding("consolidation", 0.7, "RML"),)),
    _Plan("two_view", (), photometric="MONOCHROME1"),
    _Plan("frontal_only", (Finding("nodule", 0.45, "upper"),), compression="rle"),
    _Plan("lateral_only", (Finding("pleural_effusion", 0.5, "both"),), compression="jpeg-ls"),
    _Plan("two_view", (Finding("consolidation", 0.6, "LLL"),), compression="jpeg2000"),
    _Plan("frontal_only", (), view_position=None),
    _Plan("frontal_only", (Finding("cardiomegaly", 0.4, "heart"),), view_position="AP"),
    _Plan("two_view", (Finding("nodule", 0.3, "subdiaphragmatic"),), extra_frontal=True),
    _Plan("lateral_only", ()),
    _Plan("two_view", (Finding("pleural_effusion", 0.7, "right"), Finding("cardiomegaly", 0.5, "heart"))),
)


@dataclass
class DatasetSummary:
    """What ``write_dataset`` wrote."""

    out_dir: Path
    studies: int
    routes: dict[str, int] = field(default_factory=dict)
    findings: dict[str, int] = field(default_factory=dict)
    files: int = 0
    seconds: float = 0.0


def write_dataset(
    out_dir: str | Path,
    n_studies: int,
    seed: int = 0,
    size: int = 1024,
    showcase: bool = True,
    progress: Callable[[int], None] | None = None,
) -> DatasetSummary:
    """Write ``n_studies`` synthetic studies of about ``size`` px under ``out_dir``; deterministic in ``seed``.

    ``progress`` is called with 1 after each study (a progress bar's ``update``).
    """
    if n_studies < 1:
        raise GenerateError(f"n_studies must be at least 1, got {n_studies}")
    if not 64 <= size <= 4096:
        raise GenerateError(f"size must be 64..4096 px, got {size}")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = DatasetSummary(out, n_studies, {r: 0 for r in ("two_view", "frontal_only", "lateral_only")})
    summary.findings = dict.fromkeys(LABELS, 0)
    label_rows, truth_rows = [], []
    for index in range(n_studies):
        rng = np.random.default_rng([seed, index])
        patient = random_patient(rng)
        plan = _SHOWCASE[index] if showcase and index < len(_SHOWCASE) else _random_plan(rng)
        exam = _exam(plan, rng)
        if plan.findings and any(f.label == "cardiomegaly" for f in plan.findings):
            patient = replace(patient, heart_scale=min(patient.heart_scale, 1.0))
        files, images = _write_study(out, index, seed, size, patient, plan, exam, rng)
        summary.routes[plan.route] += 1
        summary.files += sum(key.startswith("file") for key in files)
        present = {t.label for t in images.truth}
        for label in present:
            summary.findings[label] += 1
        study_uid, patient_id = files["study_uid"], files["patient_id"]
        label_rows.append(
            [study_uid, patient_id, files.get("frontal", ""), files.get("lateral", "")]
            + [int(label in present) for label in LABELS]
        )
        truth_rows.extend(_truth_rows(study_uid, patient_id, plan.route, patient, images))
        if progress is not None:
            progress(1)
    _write_csv(out / "labels.csv", LABELS_HEADER, label_rows)
    _write_csv(out / "truth.csv", TRUTH_HEADER, truth_rows)
    summary.seconds = time.perf_counter() - start
    return summary


def _random_plan(rng: np.random.Generator) -> _Plan:
    route = ("two_view", "frontal_only", "lateral_only")[int(rng.choice(3, p=[0.6, 0.25, 0.15]))]
    return _Plan(
        route,
        tuple(random_findings(rng)),
        photometric="MONOCHROME1" if rng.random() < 0.15 else "MONOCHROME2",
        compression=("none", "rle", "jpeg-ls", "jpeg2000")[int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15]))],
        view_position=None if rng.random() < 0.05 else "PA",  # "PA" becomes "AP" on an AP exam
        extra_frontal=route != "lateral_only" and rng.random() < 0.05,
    )


def _exam(plan: _Plan, rng: np.random.Generator) -> Exam:
    """The study's exam: drawn at random, with the plan's fixed fields (and an AP tag's projection)."""
    exam = random_exam(rng)
    fixed = dict(plan.exam)
    if plan.view_position == "AP" and not exam.ap:
        fixed.setdefault("projection", "AP_erect")
    names = {f.name for f in fields(Exam)}
    return replace(exam, **{k: v for k, v in fixed.items() if k in names})


def _uid(seed: int, index: int, *parts: object) -> str:
    return generate_uid(
        prefix=_ROOT_UID, entropy_srcs=["twoview-phantom", str(seed), str(index), *map(str, parts)]
    )


def _write_study(
    out: Path,
    index: int,
    seed: int,
    size: int,
    patient: Patient,
    plan: _Plan,
    exam: Exam,
    rng: np.random.Generator,
) -> tuple[dict[str, str], Radiographs]:
    views = {"two_view": ("frontal", "lateral"), "frontal_only": ("frontal",), "lateral_only": ("lateral",)}[
        plan.route
    ]
    images = simulate(patient, plan.findings, size=size, views=views, exam=exam)
    patient_id = f"TV{seed % 10000:04d}{index:05d}"
    study_uid = _uid(seed, index, "study")
    day = int(rng.integers(0, 3650))
    date = np.datetime64("2014-01-01") + np.timedelta64(day, "D")
    birth = date - np.timedelta64(int(rng.integers(20 * 365, 85 * 365)), "D")
    when = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
    modality = "CR" if rng.random() < 0.4 and plan.view_position is not None else "DX"
    bits = int(rng.choice([12, 14, 15, 16]))
    base = dict(
        pixel_spacing_mm=images.pixel_spacing_mm,
        patient_id=patient_id,
        patient_name=f"PHANTOM^{patient_id}",
        patient_sex=patient.sex,
        birth_date=str(birth).replace("-", ""),
        study_uid=study_uid,
        study_date=str(date).replace("-", ""),
        study_time=when,
        accession=f"A{seed % 1000:03d}{index:06d}",
        modality=modality,
        bits_stored=bits,
        photometric=plan.photometric,
        compression=plan.compression,
    )
    study_dir = Path(patient_id) / f"ST{index:05d}"
    written = {"study_uid": study_uid, "patient_id": patient_id}
    shots = [(view, view) for view in views]
    if plan.extra_frontal:
        shots.append(("frontal", "frontal_extra"))
    kept_frontal = None
    for number, (view, role) in enumerate(shots, start=1):
        if role == "frontal_extra":
            # A tighter-collimated, differently exposed repeat: smaller, so readers keep the listed PA.
            pixels = np.clip(_tighter(kept_frontal) * 0.92 + 0.04, 0.0, 1.0)
        else:
            pixels = images.frontal if view == "frontal" else images.lateral
            if view == "frontal":
                kept_frontal = pixels
        tagged = None if plan.view_position is None else ("AP" if exam.ap else "PA")
        position = tagged if view == "frontal" else "LL"
        facing_right = view == "lateral" and exam.facing == "right"
        name = f"{number}.dcm" if rng.random() < 0.7 else f"IM{number:04d}"
        rel = study_dir / f"SE{number:03d}" / name
        write_image(
            out / rel,
            DicomImage(
                pixels=pixels,
                series_uid=_uid(seed, index, "series", number),
                sop_uid=_uid(seed, index, "image", number),
                series_number=number,
                instance_number=1,
                view=view,
                view_position=position,
                patient_orientation=("A", "F") if facing_right else None,
                burned_in=images.annotated.get(view, False),
                series_description={
                    "frontal": "CHEST PA",
                    "lateral": "CHEST LAT",
                    "frontal_extra": "CHEST PA",
                }[role]
                if position != "AP"
                else "CHEST AP",
                **base,
            ),
        )
        if role != "frontal_extra":
            written[view] = rel.as_posix()
        written[f"file{number}"] = rel.as_posix()
    return written, images


def _tighter(pixels: np.ndarray, margin: float = 0.04) -> np.ndarray:
    """The same image with a few per cent cut from every border."""
    rows, cols = pixels.shape
    r, c = max(1, int(rows * margin)), max(1, int(cols * margin))
    return np.ascontiguousarray(pixels[r:-r, c:-c])


def _truth_rows(
    study_uid: str, patient_id: str, route: str, patient: Patient, images: Radiographs
) -> list[list[object]]:
    rows = []
    by_label = {t.label: t for t in images.truth}
    study = [
        patient.habitus,
        patient.sex,
        round(patient.scoliosis_deg, 1),
        *exam_columns(images.exam).values(),
    ]
    for label in LABELS:
        t = by_label.get(label)
        if t is None:
            rows.append([study_uid, patient_id, route, label, 0, 0, "", "", 0, 0, 0, 0, "", "", *study])
            continue
        rows.append(
            [
                study_uid,
                patient_id,
                route,
                label,
                1,
                t.severity,
                t.site,
                t.size,
                int(t.visible_frontal),
                int(t.visible_lateral),
                t.contrast_frontal,
                t.contrast_lateral,
                t.density,
                t.subtlety,
                *study,
            ]
        )
    return rows


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
