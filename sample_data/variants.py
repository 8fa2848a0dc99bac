"""How a study's films were taken and presented: the variants that make phantoms look like real films.

An ``Exam`` holds the per-study choices (AP or PA, rotation, arm pose, facing, devices, film look);
``random_exam`` draws them with the fixed shares in ``SHARES``, so the same seed always gives the same
exam, and ``exam_columns`` flattens one into the columns ``truth.csv`` records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DEVICES",
    "PROJECTIONS",
    "SHARES",
    "Exam",
    "Film",
    "exam_columns",
    "random_exam",
]

PROJECTIONS = ("PA", "AP_erect", "AP_supine")
DEVICES = ("ecg", "pacemaker", "ett", "ngt", "central_line")

# The share of studies that carry each variant (independent draws unless noted).
SHARES = {
    "projection": {"PA": 0.6, "AP_erect": 0.15, "AP_supine": 0.25},
    "rotated": 0.25,  # frontal rotation 5-15 degrees (else within about +-3)
    "arms_down": 0.15,  # lateral with the arms hanging instead of raised
    "facing_right": 0.5,  # lateral displayed with the anterior chest on the image's right
    "ecg": 0.3,
    "pacemaker": 0.08,
    "ett": 0.1,
    "ngt": 0.12,
    "central_line": 0.15,
    "marker": 0.7,  # a lead side marker (L / R)
    "text": 0.5,  # burned-in annotation (AP / PORTABLE / site / date lines)
    "collimation": {"none": 0.5, "black": 0.25, "white": 0.25},
    "tilted": 0.35,  # the film is 1-5 degrees off upright
    "off_centre": 0.4,  # the chest is shifted in the frame and the field cropped
    "soft": 0.25,  # a blurrier detector or processing
    "grain": 0.2,  # structured detector noise (banding, mottle)
}


@dataclass(frozen=True)
class Film:
    """The look of a study's films: processing, noise, framing and what is burned into the pixels."""

    seed: int = 0  # per-view placement (tilt, shift, crop, borders, text corners) is drawn from it
    gamma: float = 0.7
    contrast: float = 4.4  # slope of the display curve
    level: float = 0.38  # where in the window the curve's middle sits
    sharpen: float = 1.6  # unsharp-mask gain of the processing
    equalize: float = 0.12  # dynamic range compression (large-scale density pulled to the mean)
    marker: bool = False
    text: tuple[str, ...] = ()
    collimation: str = "none"  # "none", "black" or "white" borders
    cropped: bool = False  # the stored field is a little smaller than the rendered one (every drawn exam)
    tilted: bool = False
    off_centre: bool = False
    soft: bool = False
    grain: bool = False


@dataclass(frozen=True)
class Exam:
    """One study's acquisition: projection and positioning of each view, devices, and the film's look.

    ``Exam()`` is a clean, well-positioned PA and left lateral without devices or burned-in text.
    """

    projection: str = "PA"  # frontal: "PA", "AP_erect" or "AP_supine"
    rotation_deg: float = 0.0  # frontal: patient turned about the vertical axis
    lateral_rotation_deg: float = 0.0  # lateral: off a true lateral
    arms: str = "up"  # lateral: "up" or "down"
    arm_angle_deg: float = 140.0  # lateral, arms up: elevation from hanging
    facing: str = "left"  # lateral: which side of the image the anterior chest is on
    devices: tuple[str, ...] = ()  # any of DEVICES
    film: Film = field(default_factory=Film)

    @property
    def ap(self) -> bool:
        return self.projection != "PA"


def _pick(rng: np.random.Generator, shares: dict[str, float]) -> str:
    names = list(shares)
    return names[int(rng.choice(len(names), p=[shares[n] for n in names]))]


def random_exam(rng: np.random.Generator) -> Exam:
    """Draw an exam with the shares in ``SHARES``; every draw is made whatever the outcome (seed-stable)."""
    projection = _pick(rng, SHARES["projection"])
    rotated = rng.random() < SHARES["rotated"]
    turn = rng.uniform(5.0, 15.0) * (1.0 if rng.random() < 0.5 else -1.0)
    rotation = turn if rotated else float(np.clip(rng.normal(0.0, 1.5), -3.0, 3.0))
    lateral_rotation = float(np.clip(rng.normal(0.0, 2.5), -6.0, 6.0))
    arms = "down" if rng.random() < SHARES["arms_down"] else "up"
    arm_angle = float(rng.uniform(115.0, 175.0))
    facing = "right" if rng.random() < SHARES["facing_right"] else "left"
    devices = tuple(d for d, u in zip(DEVICES, rng.random(len(DEVICES)), strict=True) if u < SHARES[d])
    marker = rng.random() < SHARES["marker"]
    has_text = rng.random() < SHARES["text"]
    seed = int(rng.integers(0, 2**31 - 1))
    text = _annotation(np.random.default_rng([seed, 1]), projection) if has_text else ()
    film = Film(
        seed=seed,
        gamma=float(rng.uniform(0.55, 1.1)),
        contrast=float(rng.uniform(2.8, 5.4)),
        level=float(rng.uniform(0.3, 0.46)),
        sharpen=float(rng.uniform(1.2, 2.0)),
        equalize=float(rng.uniform(0.05, 0.3)),
        marker=marker,
        text=text,
        collimation=_pick(rng, SHARES["collimation"]),
        cropped=True,
        tilted=rng.random() < SHARES["tilted"],
        off_centre=rng.random() < SHARES["off_centre"],
        soft=rng.random() < SHARES["soft"],
        grain=rng.random() < SHARES["grain"],
    )
    return Exam(
        projection=projection,
        rotation_deg=round(float(rotation), 2),
        lateral_rotation_deg=round(lateral_rotation, 2),
        arms=arms,
        arm_angle_deg=round(arm_angle, 1),
        facing=facing,
        devices=devices,
        film=film,
    )


_SITES = ("NORTHFIELD GEN", "RAD DEPT 2", "WARD 7B", "ICU BAY 4", "IMAGING CTR", "MOBILE UNIT 3", "ED RESUS")


def _annotation(rng: np.random.Generator, projection: str) -> tuple[str, ...]:
    """Burned-in lines like a modality writes: the projection words on bedside films, a site, a date."""
    words = {
        "PA": ("PA", "ERECT", "UPRIGHT", "PA ERECT"),
        "AP_erect": ("AP", "PORTABLE", "AP SITTING", "AP ERECT", "MOBILE"),
        "AP_supine": ("AP SUPINE", "PORTABLE", "SUPINE", "AP", "BEDSIDE"),
    }[projection]
    lines = [words[int(rng.integers(len(words)))]]
    if rng.random() < 0.6:
        lines.append(_SITES[int(rng.integers(len(_SITES)))])
    if rng.random() < 0.5:
        day = np.datetime64("2015-01-01") + np.timedelta64(int(rng.integers(0, 3650)), "D")
        lines.append(f"{day} {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}")
    if rng.random() < 0.3:
        lines.append(f"{int(rng.integers(80, 125))} kV {rng.uniform(0.8, 6.0):.1f} mAs")
    return tuple(lines)


def exam_columns(exam: Exam) -> dict[str, object]:
    """The exam's variants as flat ``truth.csv`` columns (devices one 0/1 column each)."""
    f = exam.film
    return {
        "projection": exam.projection,
        "rotation_deg": exam.rotation_deg,
        "lateral_rotation_deg": exam.lateral_rotation_deg,
        "arms": exam.arms,
        "facing": exam.facing,
        **{d: int(d in exam.devices) for d in DEVICES},
        "marker": int(f.marker),
        "burned_in_text": "|".join(f.text),
        "collimation": f.collimation,
        "tilted": int(f.tilted),
        "off_centre": int(f.off_centre),
        "soft": int(f.soft),
        "grain": int(f.grain),
        "gamma": round(f.gamma, 3),
        "contrast": round(f.contrast, 3),
        "equalize": round(f.equalize, 3),
    }
