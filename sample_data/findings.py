"""Findings painted into a phantom volume, each with a severity and a 3D position.

Every finding records how it changed the attenuation line integrals of each view, so the renderer can
tell whether a radiologist could see it on the frontal view, the lateral view, or both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sample_data.anatomy import HEART_PITCH_DEG, HEART_TILT_DEG, MU, Anatomy, Painter, heart_radii

__all__ = [
    "LABELS",
    "effusion_volume_ml",
    "SITES",
    "Finding",
    "FindingError",
    "PlacedFinding",
    "SUBTLE_SHARE",
    "apply_findings",
    "random_findings",
]

LABELS = ("pleural_effusion", "nodule", "cardiomegaly", "pneumothorax", "consolidation")
SITES = {
    "pleural_effusion": ("left", "right", "both"),
    "nodule": ("retrocardiac", "subdiaphragmatic", "upper", "peripheral", "any"),
    "cardiomegaly": ("heart",),
    "pneumothorax": ("left", "right"),
    "consolidation": ("RUL", "RML", "RLL", "LUL", "LLL"),
}


class FindingError(ValueError):
    """A finding that cannot be placed: unknown label or site, or no room for it in this patient."""


@dataclass(frozen=True)
class Finding:
    """What to add: a label, a severity in (0, 1], a site from ``SITES[label]`` and a density in (0, 1].

    Severity sets the size (nodule diameter, effusion volume, extent); density how opaque a nodule or
    consolidation is (below 1: part-solid, ground glass). Other findings ignore density.
    """

    label: str
    severity: float
    site: str
    density: float = 1.0

    def __post_init__(self) -> None:
        if self.label not in SITES:
            raise FindingError(f"unknown finding '{self.label}'; choose one of: {', '.join(LABELS)}")
        if self.site not in SITES[self.label]:
            raise FindingError(
                f"unknown site '{self.site}' for {self.label}; choose one of: {', '.join(SITES[self.label])}"
            )
        if not 0.0 < self.severity <= 1.0:
            raise FindingError(f"severity must be in (0, 1], got {self.severity}")
        if not 0.0 < self.density <= 1.0:
            raise FindingError(f"density must be in (0, 1], got {self.density}")


@dataclass
class PlacedFinding:
    """A finding as placed: its centre, its size, and how it changed the attenuation volume."""

    finding: Finding
    position_mm: tuple[float, float, float]  # patient x, y, z
    size: float  # nodule diameter mm, effusion mL, pneumothorax rim mm, consolidation mL, heart CTR
    delta: np.ndarray  # [z, y, x] change of attenuation per mm; each view projects it through its beam


SUBTLE_SHARE = 0.3  # findings drawn from the subtle end (small, and for opacities faint as well)


def random_findings(rng: np.random.Generator, p_normal: float = 0.35) -> list[Finding]:
    """Draw zero to three findings with plausible severities, densities and sites.

    ``SUBTLE_SHARE`` of them come from the subtle end (severity 0.02-0.12), so some are hard or
    impossible to see on either view, as on real films.
    """
    if rng.random() < p_normal:
        return []
    n = 1 + int(rng.random() < 0.35) + int(rng.random() < 0.1)
    labels = rng.choice(len(LABELS), size=n, replace=False, p=[0.25, 0.25, 0.2, 0.12, 0.18])
    found = []
    for i in sorted(labels):
        label = LABELS[i]
        sites = SITES[label]
        weights = {"nodule": [0.25, 0.15, 0.2, 0.2, 0.2]}.get(label)
        site = sites[int(rng.choice(len(sites), p=weights))]
        subtle = rng.random() < SUBTLE_SHARE
        severity = rng.uniform(0.02, 0.12) if subtle else float(np.clip(rng.beta(1.3, 2.2), 0.05, 1.0))
        opacity = rng.uniform(0.12, 0.5) if subtle else rng.uniform(0.5, 1.0)
        density = opacity if label in ("nodule", "consolidation") else 1.0
        found.append(Finding(label, round(float(severity), 3), site, round(float(density), 3)))
    return found


def apply_findings(anatomy: Anatomy, findings: list[Finding]) -> list[PlacedFinding]:
    """Paint ``findings`` into ``anatomy.mu`` in order; deterministic in the patient's seed."""
    rng = np.random.default_rng([anatomy.patient.seed, 7])
    placed = []
    for f in findings:
        before = anatomy.mu.copy()
        position, size = _APPLY[f.label](anatomy, f, rng)
        placed.append(PlacedFinding(f, position, size, anatomy.mu - before))
    return placed


def _coords(an: Anatomy, k: np.ndarray, j: np.ndarray, i: np.ndarray) -> np.ndarray:
    z, _, _ = an.grid.axes()
    return np.stack([an.px[0, j, i], an.py[0, j, i], z[k]], axis=-1)


def _side(an: Anatomy, side: str) -> np.ndarray:
    return an.px > 0 if side == "left" else an.px < 0


def effusion_volume_ml(severity: float) -> float:
    """Effusion volume for a severity: ~4 mL at 0.02 (below what any view shows), ~14 at 0.05,
    ~46 at 0.12, ~165 at 0.3, ~545 at 0.7."""
    return 900.0 * severity**1.4


def _effusion(an: Anatomy, f: Finding, rng: np.random.Generator) -> tuple[tuple[float, float, float], float]:
    """Fluid fills the lowest lung first, the posterior costophrenic recess, with a meniscus at the wall."""
    z, _, _ = an.grid.axes()
    aerated = an.mu == MU["lung"]
    sides = ("left", "right") if f.site == "both" else (f.site,)
    voxel_ml = an.grid.voxel_mm**3 / 1000.0
    a, b, yc = an.thorax(z)
    total = np.zeros(an.mu.shape, dtype=bool)
    for side in sides:
        region = an.lung & _side(an, side) & aerated
        k, j, i = np.nonzero(region)
        if k.size == 0:
            raise FindingError(f"no {side} lung to hold an effusion")
        rho = np.sqrt((an.px[0, j, i] / a[k]) ** 2 + ((an.py[0, j, i] - yc[k]) / b[k]) ** 2)
        # Depth below the fluid surface: the surface is level, rising at the wall (meniscus).
        # Upright, the posterior costophrenic recess is the lowest and fills first.
        key = z[k] + 12.0 * rho**6 + 0.4 * an.py[0, j, i]
        n = min(k.size, max(1, round(effusion_volume_ml(f.severity) / len(sides) / voxel_ml)))
        fill = np.argsort(-key, kind="stable")[:n]
        total[k[fill], j[fill], i[fill]] = True
    an.mu[total] = MU["fluid"]
    k, j, i = np.nonzero(total)
    volume_ml = float(k.size * voxel_ml)
    return tuple(float(c) for c in _coords(an, k, j, i).mean(axis=0)), volume_ml


def _nodule(an: Anatomy, f: Finding, rng: np.random.Generator) -> tuple[tuple[float, float, float], float]:
    """A soft-tissue sphere inside aerated lung at the requested site."""
    z, _, _ = an.grid.axes()
    lm = an.landmarks
    radius = 3.5 + 22.0 * f.severity
    ok = an.lung & (an.mu == MU["lung"])
    zz = z[:, None, None]
    if f.site == "retrocardiac":
        # Behind the thickest part of the heart shadow, where the frontal view hides it best.
        depth = an.heart.sum(axis=1, keepdims=True)
        ok &= (depth >= 0.85 * depth.max()) & (an.px > 0) & (an.px < 45.0 * lm["scale"])
        ok &= (an.py > lm["heart_y"] + 10.0) & (an.py < lm["spine_y"] - 18.0 * lm["scale"])
    elif f.site == "subdiaphragmatic":
        ok &= zz > np.where(an.px > 0, lm["dome_l"], lm["dome_r"]) + radius + 6.0
    elif f.site == "upper":
        ok &= zz < lm["carina"]
    elif f.site == "peripheral":
        ok &= np.abs(an.px) > 0.6 * lm["cage_a"]
    k, j, i = np.nonzero(ok)
    if k.size == 0:
        if f.site == "any":
            raise FindingError("no aerated lung left for a nodule in this patient")
        return _nodule(an, Finding(f.label, f.severity, "any"), rng)
    pts = _coords(an, k, j, i)
    checks = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)
    for idx in rng.permutation(k.size)[:400]:
        c = pts[idx]
        if all(_in_lung(an, c + d * radius * 0.7) for d in checks):
            break
    else:
        radius *= 0.6
        c = pts[rng.integers(k.size)]
    painter = Painter(an.grid, an.mu)
    sl, occ = painter.ellipsoid(tuple(float(v) for v in c), (radius, radius * 0.95, radius * 1.05))
    painter.paint_max(sl, occ, MU["lung"] + f.density * (MU["soft"] - MU["lung"]))
    return tuple(float(v) for v in c), 2.0 * radius


def _in_lung(an: Anatomy, p: np.ndarray) -> bool:
    k, j, i, inside = an.grid.index(p[0], p[1], p[2])
    if not inside:
        return False
    return bool(an.lung[k, j, i]) and an.mu[k, j, i] == MU["lung"]


def _cardiomegaly(
    an: Anatomy, f: Finding, rng: np.random.Generator
) -> tuple[tuple[float, float, float], float]:
    """An enlarged heart taking over the neighbouring lung; size is the resulting frontal CTR."""
    lm = an.landmarks
    scale = an.patient.heart_scale * (1.1 + 0.4 * f.severity)
    painter = Painter(an.grid, an.mu)
    center = (lm["heart_x"] + 6.0 * f.severity * lm["scale"], lm["heart_y"], lm["heart_z"])
    sl, occ = painter.ellipsoid(
        center, heart_radii(lm, scale), tilt_deg=HEART_TILT_DEG, pitch_deg=HEART_PITCH_DEG
    )
    painter.paint_max(sl, occ, MU["blood"])
    an.heart[sl] |= occ > 0.5
    an.lung[sl] &= ~(occ > 0.5)
    return center, cardiothoracic_ratio(an)


def cardiothoracic_ratio(an: Anatomy) -> float:
    """Widest heart shadow over widest inner rib-cage width on the frontal projection."""
    v = an.grid.voxel_mm
    heart_cols = an.heart.any(axis=(0, 1))
    cage_cols = (an.lung | an.heart).any(axis=1)  # [z, x]
    width = cage_cols.sum(axis=1).max() * v
    return float(heart_cols.sum() * v / width)


def _pneumothorax(
    an: Anatomy, f: Finding, rng: np.random.Generator
) -> tuple[tuple[float, float, float], float]:
    """The lung shrinks towards its hilum, leaving air without markings and a thin visceral pleural line."""
    z, _, _ = an.grid.axes()
    lm = an.landmarks
    sign = 1.0 if f.site == "left" else -1.0
    hilum = np.array([sign * 60.0 * lm["scale"], 5.0 * lm["scale"], lm["carina"] + 25.0], np.float32)
    region = an.lung & _side(an, f.site) & (an.mu == MU["lung"])
    k, j, i = np.nonzero(region)
    pts = _coords(an, k, j, i)
    collapse = 0.05 + 0.3 * f.severity

    def outside(frac: float) -> np.ndarray:
        q = hilum + (pts - hilum) / (1.0 - frac)
        a, b, yc = an.thorax(q[:, 2])
        rho = np.sqrt((q[:, 0] / a) ** 2 + ((q[:, 1] - yc) / b) ** 2)
        return (rho > 1.0) | (q[:, 2] < lm["cage_top"])

    air = outside(collapse)
    line = ~air & outside(collapse + 3.5 / 100.0)
    an.mu[k[air], j[air], i[air]] = MU["air"]
    an.mu[k[line], j[line], i[line]] = MU["lung"] + 0.007
    an.lung[k[air], j[air], i[air]] = False
    if not air.any():
        raise FindingError("the pneumothorax is too small for this grid")
    apex = pts[air][np.argmin(pts[air][:, 2])]
    rim = float(np.ptp(pts[air][:, 0])) if air.sum() > 1 else an.grid.voxel_mm
    return tuple(float(c) for c in apex), min(rim, collapse * 2.0 * lm["cage_a"])


def lobes(an: Anatomy) -> dict[str, np.ndarray]:
    """Lobe masks from an oblique fissure on each side and a horizontal fissure on the right."""
    z, _, _ = an.grid.axes()
    lm = an.landmarks
    zz = z[:, None, None]
    y0, z0 = lm["spine_y"] - 10.0, lm["cage_top"] + 70.0
    y1, z1 = -0.7 * lm["cage_b"], lm["dome_r"]
    fissure = z0 + (an.py - y0) * (z1 - z0) / (y1 - y0)
    lower = zz > fissure
    right, left = an.px < 0, an.px > 0
    horizontal = zz < lm["carina"] + 45.0
    return {
        "RUL": an.lung & right & ~lower & horizontal,
        "RML": an.lung & right & ~lower & ~horizontal,
        "RLL": an.lung & right & lower,
        "LUL": an.lung & left & ~lower,
        "LLL": an.lung & left & lower,
    }


def _consolidation(
    an: Anatomy, f: Finding, rng: np.random.Generator
) -> tuple[tuple[float, float, float], float]:
    """Airspace opacity filling part of one lobe, bounded by its fissures."""
    lobe = lobes(an)[f.site] & (an.mu == MU["lung"])
    k, j, i = np.nonzero(lobe)
    if k.size == 0:
        raise FindingError(f"lobe {f.site} is empty in this patient")
    pts = _coords(an, k, j, i)
    seed = pts[rng.integers(k.size)]
    center = 0.5 * (pts.mean(axis=0) + seed)
    dist = np.linalg.norm(pts - center, axis=1)
    keep = dist <= np.quantile(dist, 0.03 + 0.93 * f.severity)
    texture = f.density * rng.uniform(0.75, 0.95, size=int(keep.sum())).astype(np.float32)
    an.mu[k[keep], j[keep], i[keep]] = MU["lung"] + (MU["soft"] - MU["lung"]) * texture
    volume_ml = float(keep.sum() * an.grid.voxel_mm**3 / 1000.0)
    return tuple(float(c) for c in pts[keep].mean(axis=0)), volume_ml


_APPLY = {
    "pleural_effusion": _effusion,
    "nodule": _nodule,
    "cardiomegaly": _cardiomegaly,
    "pneumothorax": _pneumothorax,
    "consolidation": _consolidation,
}
