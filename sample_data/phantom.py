"""Digitally reconstructed radiographs of one phantom: a PA and a left lateral of the same volume.

The volume is coarse (4 mm); detail comes from drawing in 2D on the detector, consistently for both
views: ribs (analytic samples through a diverging beam), the shoulder girdle (per-view pose), a
branching pulmonary vessel tree and lung texture are added to the upsampled line integrals, then
scatter, quantum noise, detector blur, unsharp masking, dynamic range compression and a sigmoid
display curve make it look like a processed CR/DX image (bright = dense).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from sample_data.anatomy import MU, Anatomy, Patient, build_anatomy
from sample_data.findings import Finding, apply_findings, cardiothoracic_ratio

__all__ = [
    "VIEWS",
    "VISIBILITY_THRESHOLD",
    "FindingTruth",
    "Radiographs",
    "simulate",
]

VIEWS = ("frontal", "lateral")
VISIBILITY_THRESHOLD = 0.03  # peak display change (0..1 scale, 9 mm smoothing) a reader would notice
_GAMMA = 0.7  # brightens the mid-tones (lungs) like a clinical look-up table
_SCATTER = 0.3  # scatter generated per attenuated primary, behind an anti-scatter grid
_SCATTER_SIGMA_MM = 45.0
_PHOTONS = 9000.0  # unattenuated quanta per 0.4 mm pixel at exposure 1


@dataclass(frozen=True)
class FindingTruth:
    """One finding as placed, and whether each view shows it."""

    label: str
    site: str
    severity: float
    position_mm: tuple[float, float, float]
    size: float
    contrast_frontal: float
    contrast_lateral: float

    @property
    def visible_frontal(self) -> bool:
        return self.contrast_frontal >= VISIBILITY_THRESHOLD

    @property
    def visible_lateral(self) -> bool:
        return self.contrast_lateral >= VISIBILITY_THRESHOLD


@dataclass
class Radiographs:
    """The rendered views (float32 [0, 1], bright = dense) and what is known about them."""

    frontal: np.ndarray | None
    lateral: np.ndarray | None
    pixel_spacing_mm: float
    truth: list[FindingTruth]
    cardiothoracic_ratio: float


def simulate(
    patient: Patient,
    findings: list[Finding] | tuple[Finding, ...] = (),
    size: int = 1024,
    views: tuple[str, ...] = VIEWS,
    noise_seed: int | None = None,
) -> Radiographs:
    """Build the patient, add the findings and render the requested views at ``size`` x ``size`` px."""
    anatomy = build_anatomy(patient)
    placed = apply_findings(anatomy, list(findings))
    rng = np.random.default_rng([patient.seed, 11] if noise_seed is None else [noise_seed, 13])
    points = _vessel_tree(anatomy, np.random.default_rng([patient.seed, 5]))
    v = anatomy.grid.voxel_mm
    lm = anatomy.landmarks
    chest = slice(int(lm["carina"] / v), int(lm["dome_l"] / v))  # the lower lung-field rows
    images: dict[str, np.ndarray] = {}
    contrast: dict[str, list[float]] = {}
    for view in VIEWS:
        axis = 1 if view == "frontal" else 2
        # A slight blur hides the voxel staircase along body and organ outlines.
        base = ndimage.gaussian_filter(_pad(anatomy, anatomy.mu.sum(axis=axis) * v), 0.5)
        line = base + _rib_projection(anatomy, view, base.shape) + _girdle(anatomy, view, base.shape)
        deltas = [p.delta_frontal if view == "frontal" else p.delta_lateral for p in placed]
        deltas = [_pad(anatomy, d) for d in deltas]
        display = _Display(line, patient.exposure, v, chest)
        contrast[view] = [display.visibility(line, d) for d in deltas]
        if view in views:
            lung = _pad(anatomy, (anatomy.mu == MU["lung"]).sum(axis=axis, dtype=np.float32) * v)
            images[view] = _render(anatomy, base, line, lung, display, points, view, size, rng)
    truth = [
        FindingTruth(
            p.finding.label,
            p.finding.site,
            p.finding.severity,
            tuple(round(c, 1) for c in p.position_mm),
            round(p.size, 3),
            round(cf, 4),
            round(cl, 4),
        )
        for p, cf, cl in zip(placed, contrast["frontal"], contrast["lateral"], strict=True)
    ]
    return Radiographs(
        images.get("frontal"),
        images.get("lateral"),
        anatomy.grid.width_mm / size,
        truth,
        cardiothoracic_ratio(anatomy),
    )


def _pad(anatomy: Anatomy, line: np.ndarray) -> np.ndarray:
    """Centre a lateral projection (depth < width) on the square detector."""
    n = anatomy.mu.shape[2]
    extra = n - line.shape[1]
    if extra <= 0:
        return line
    return np.pad(line, ((0, 0), (extra // 2, extra - extra // 2)))


class _Display:
    """Scatter, log and the display curve, fitted once per view on the coarse projection."""

    def __init__(self, line: np.ndarray, exposure: float, voxel_mm: float, rows: slice) -> None:
        primary = np.exp(-line)
        self.scatter = _SCATTER * ndimage.gaussian_filter(
            primary * line, _SCATTER_SIGMA_MM / voxel_mm, mode="nearest"
        )
        dens = -np.log(primary + self.scatter)
        body = dens[rows][line[rows] > 1.0]  # window on the chest, as clinical processing does
        self.lo = float(np.percentile(body, 8.0)) if body.size else 0.0
        self.hi = 1.03 * float(np.percentile(body, 99.9)) if body.size else 1.0
        self.exposure = exposure
        self.voxel_mm = voxel_mm
        zero = self._curve(np.float32(0.0), raw=True)
        self.base, self.span = zero, self._curve(np.float32(self.hi), raw=True) - zero

    def _curve(self, dens: np.ndarray, raw: bool = False) -> np.ndarray:
        y = np.array(dens, dtype=np.float32)  # a copy, then in place: this runs on full-size images
        y -= self.lo + 0.38 * (self.hi - self.lo)
        y *= -4.4 / (self.hi - self.lo)
        np.exp(y, out=y)
        y += 1.0
        np.reciprocal(y, out=y)
        if raw:
            return y
        y -= self.base
        y *= 1.0 / self.span
        np.clip(y, 0.0, 1.0, out=y)
        return np.power(y, _GAMMA, out=y)

    def show(self, dens: np.ndarray) -> np.ndarray:
        return self._curve(dens)

    def visibility(self, line: np.ndarray, delta: np.ndarray) -> float:
        """Peak change of the displayed image (9 mm smoothing) that this finding causes."""
        with_ = self.show(-np.log(np.exp(-line) + self.scatter))
        without = self.show(-np.log(np.exp(-(line - delta)) + self.scatter))
        return float(
            ndimage.uniform_filter(np.abs(with_ - without), max(1, round(9.0 / self.voxel_mm))).max()
        )


def _vessel_tree(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels: a random binary tree of tapering segments grown from each hilum.

    Returns points sampled along the segments, ``[n, 6]``: patient x, y, z, radius, grid x, grid y.
    """
    lm = anatomy.landmarks
    s = lm["scale"]
    trunks = []
    for sign in (-1.0, 1.0):
        hilum = np.array([sign * 55.0 * s, 4.0 * s, lm["carina"] + 26.0 * s], np.float32)
        for dx, dy, dz in (
            (0.5, 0.1, -1.0),
            (1.0, -0.5, -0.3),
            (1.0, 0.4, 0.1),
            (0.5, -0.6, 0.9),
            (0.5, 0.6, 1.0),
            (0.3, 0.0, 1.0),
        ):
            trunks.append((hilum, np.array([sign * dx, dy, dz], np.float32)))
    pos = np.stack([t[0] for t in trunks]) + rng.normal(0.0, 4.0, (len(trunks), 3)).astype(np.float32)
    heading = np.stack([t[1] for t in trunks]) + rng.normal(0.0, 0.15, (len(trunks), 3)).astype(np.float32)
    heading /= np.linalg.norm(heading, axis=1, keepdims=True)
    radius = rng.uniform(3.6, 4.6, len(trunks)).astype(np.float32) * s
    length = rng.uniform(24.0, 32.0, len(trunks)).astype(np.float32) * s
    out = []
    step = _VESSEL_STEP_MM
    for gen in range(11):
        n_steps = int(np.ceil(length.max() / step))
        t = np.arange(n_steps, dtype=np.float32)[None, :] * step  # [b, steps]
        inside_seg = t < length[:, None]
        pts = pos[:, None, :] + heading[:, None, :] * t[..., None]
        taper = radius[:, None] * (1.0 - 0.12 * t / length[:, None])
        alive = (_aerated(anatomy, pts) | (gen < 2)) & inside_seg
        out.append(np.concatenate([pts[alive], taper[alive][:, None]], axis=1))
        end_ok = alive[np.arange(len(pos)), np.minimum((length / step).astype(int), n_steps - 1) - 1]
        keep = end_ok & (radius * 0.79 > 0.35)
        if not keep.any():
            break
        pos = (pos + heading * length[:, None])[keep]
        heading, radius, length = heading[keep], radius[keep] * 0.79, length[keep] * 0.84
        # Two children turned apart by 20-40 degrees about a random axis perpendicular to the parent.
        b = len(pos)
        axis = np.cross(heading, rng.normal(size=(b, 3)).astype(np.float32))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True) + 1e-6
        kids = []
        for turn in (1.0, -1.0):
            ang = turn * np.deg2rad(rng.uniform(18.0, 40.0, b)).astype(np.float32)[:, None]
            kid = heading * np.cos(ang) + np.cross(axis, heading) * np.sin(ang)
            kid += 0.25 * (pos - np.array([0.0, 0.0, lm["carina"]], np.float32)) / 150.0
            kids.append(kid / np.linalg.norm(kid, axis=1, keepdims=True))
        pos = np.concatenate([pos, pos])
        heading = np.concatenate(kids)
        radius = np.concatenate([radius, radius * rng.uniform(0.8, 1.0, b).astype(np.float32)])
        length = np.concatenate([length, length]) * rng.uniform(0.75, 1.25, 2 * b).astype(np.float32)
    pts = np.concatenate(out).astype(np.float32)
    rot = np.deg2rad(anatomy.patient.rotation_deg)
    gx = pts[:, 0] * np.cos(rot) - pts[:, 1] * np.sin(rot)
    gy = pts[:, 0] * np.sin(rot) + pts[:, 1] * np.cos(rot)
    return np.concatenate([pts, gx[:, None], gy[:, None]], axis=1)


def _aerated(anatomy: Anatomy, pts: np.ndarray) -> np.ndarray:
    """Whether patient points ``[..., 3]`` lie in aerated lung (nearest voxel)."""
    g = anatomy.grid
    rot = np.deg2rad(anatomy.patient.rotation_deg)
    gx = pts[..., 0] * np.cos(rot) - pts[..., 1] * np.sin(rot)
    gy = pts[..., 0] * np.sin(rot) + pts[..., 1] * np.cos(rot)
    k = (pts[..., 2] / g.voxel_mm).astype(np.int64)
    j = ((gy + g.depth_mm / 2) / g.voxel_mm).astype(np.int64)
    i = ((gx + g.width_mm / 2) / g.voxel_mm).astype(np.int64)
    nz, ny, nx = anatomy.mu.shape
    inside = (k >= 0) & (k < nz) & (j >= 0) & (j < ny) & (i >= 0) & (i < nx)
    ok = np.zeros(k.shape, dtype=bool)
    ok[inside] = anatomy.mu[k[inside], j[inside], i[inside]] == MU["lung"]
    return ok


_VESSEL_STEP_MM = 0.8  # sampling step along the vessel centre lines
_SID_MM = 1800.0  # source to detector
_DETECTOR_MM = {"frontal": 130.0, "lateral": 170.0}  # detector plane from the grid centre (front / left)


def _rib_projection(anatomy: Anatomy, view: str, shape: tuple[int, int]) -> np.ndarray:
    """Ribs projected through a diverging beam onto a detector grid of ``shape``, line integrals.

    The side far from the detector is magnified more, so left and right ribs do not coincide on the
    lateral and posterior ribs look broader than anterior ones on the PA, as on real films.
    """
    g = anatomy.grid
    rows, cols = shape
    ribs = anatomy.ribs
    gx, gy, gz, val = ribs[:, 0], ribs[:, 1], ribs[:, 2], ribs[:, 3]
    d0 = _DETECTOR_MM[view]
    across, dist = (gx, d0 + gy) if view == "frontal" else (gy, d0 - gx)
    m = (_SID_MM - d0) / (_SID_MM - dist)
    zc = g.height_mm / 2
    pw, ph = g.width_mm / cols, g.height_mm / rows
    u = (across * m + g.width_mm / 2) / pw - 0.5
    w = (zc + (gz - zc) * m) / ph - 0.5
    img = _bilinear_splat(w, u, val / (m * m * pw * ph), shape)
    # Samples are 2.5 mm apart: a little blur closes the gaps on fine grids. On the lateral the ribs sit
    # far from the detector (focal-spot blur) behind the thickest soft tissue: faint and soft-edged on
    # real films, which the empirical factor matches.
    sigma = max(0.5, 1.2 / pw) if view == "frontal" else 3.0 / pw
    img = ndimage.gaussian_filter(img, sigma)
    return img if view == "frontal" else 0.65 * img


def _bilinear_splat(
    row: np.ndarray, col: np.ndarray, weight: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    r0, c0 = np.floor(row), np.floor(col)
    fr, fc = (row - r0).astype(np.float32), (col - c0).astype(np.float32)
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    img = np.zeros(shape[0] * shape[1], np.float64)
    for dr, wr in ((0, 1.0 - fr), (1, fr)):
        for dc, wc in ((0, 1.0 - fc), (1, fc)):
            r, c = r0 + dr, c0 + dc
            ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
            img += np.bincount((r * shape[1] + c)[ok], (weight * wr * wc)[ok], img.size)
    return img.reshape(shape).astype(np.float32)


def _splat(points: np.ndarray, view: str, anatomy: Anatomy, size: int) -> np.ndarray:
    """Line-integral image of the vessels on a ``size`` grid over the detector.

    Vessels are weighted twice their physical contrast, as clinical edge processing makes them stand out.
    """
    g = anatomy.grid
    ps = g.width_mm / size
    across = points[:, 4] + g.width_mm / 2 if view == "frontal" else points[:, 5] + g.width_mm / 2
    row = np.clip((points[:, 2] / ps).astype(np.int64), 0, size - 1)
    col = np.clip((across / ps).astype(np.int64), 0, size - 1)
    weight = 2.0 * (MU["blood"] - MU["lung"]) * np.pi * points[:, 3] ** 2 * _VESSEL_STEP_MM / ps**2
    img = np.bincount(row * size + col, weights=weight, minlength=size * size)
    return img.reshape(size, size).astype(np.float32)


def _ellipse_proj(X, Z, c, r, depth, tilt_deg=0.0):
    """Line integral (mm) through an ellipsoid with in-plane semi-axes ``r`` and ``depth`` along the beam."""
    t = np.deg2rad(tilt_deg)
    dx, dz = X - c[0], Z - c[1]
    u = (dx * np.cos(t) + dz * np.sin(t)) / r[0]
    w = (-dx * np.sin(t) + dz * np.cos(t)) / r[1]
    return 2.0 * depth * np.sqrt(np.maximum(1.0 - u * u - w * w, 0.0))


def _tube_proj(X, Z, a, b, radius):
    """Line integral (mm) through a round bar from ``a`` to ``b`` lying in the detector plane."""
    ax, az = a
    dx, dz = b[0] - ax, b[1] - az
    t = np.clip(((X - ax) * dx + (Z - az) * dz) / (dx * dx + dz * dz), 0.0, 1.0)
    d2 = (X - ax - t * dx) ** 2 + (Z - az - t * dz) ** 2
    return 2.0 * np.sqrt(np.maximum(radius * radius - d2, 0.0))


def _bone(proj, X, Z, *args, cortex=2.5):
    """A bone as a trabecular core in a cortical shell, from a primitive projection and its radius."""
    *geom, radius = args
    outer = proj(X, Z, *geom, radius)
    inner = proj(X, Z, *geom, max(radius - cortex, 0.5))
    return (MU["trabecular"] - MU["soft"]) * inner + (MU["cortical"] - MU["soft"]) * (outer - inner)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _girdle(anatomy: Anatomy, view: str, shape: tuple[int, int]) -> np.ndarray:
    """Shoulders, drawn per view as line integrals on a detector grid of ``shape`` (their pose differs).

    PA: shoulders rolled forward, arms out of the field: shoulder soft tissue, clavicles, humeral heads
    and the scapulae mostly off the lungs. Lateral: arms raised, so only overlapping soft tissue of the
    arms and shoulders over the upper chest, fading smoothly downwards, and the scapular borders behind.
    """
    g = anatomy.grid
    lm = anatomy.landmarks
    s, top = lm["scale"], lm["cage_top"]
    rows, cols = shape
    Z = ((np.arange(rows, dtype=np.float32) + 0.5) * g.height_mm / rows)[:, None]
    X = ((np.arange(cols, dtype=np.float32) + 0.5) * g.width_mm / cols - g.width_mm / 2)[None, :]
    soft = MU["soft"]
    img = np.zeros(shape, np.float32)
    if view == "frontal":
        X = X + anatomy.patient.rotation_deg * 1.5  # rotation shifts the girdle against the spine
        ax = np.abs(X)
        # Trapezius sloping from the neck to the acromion, and the shoulder.
        ridge = top - 44.0 * s + 70.0 * s * np.clip((ax - 40.0 * s) / (140.0 * s), 0.0, 1.0) ** 1.3
        below = _smoothstep((Z - ridge) / (14.0 * s))
        # The slab thins out lower down, sooner at the sides (the rounded shoulder; arms out of field).
        low = top + 25.0 * s - 30.0 * s * np.clip((ax - 120.0 * s) / (60.0 * s), 0.0, 1.0)
        chest = _smoothstep((ax - 30.0 * s) / (45.0 * s)) * (1.0 - _smoothstep((Z - low) / (60.0 * s)))
        img += soft * 70.0 * s * below * chest
        for sign in (-1.0, 1.0):
            img += _bone(
                _ellipse_proj,
                X,
                Z,
                (sign * 166.0 * s, top + 42.0 * s),
                (22.0 * s, 22.0 * s),
                22.0 * s,
                cortex=0.12,
            )
            clav = (
                (sign * 16.0 * s, top + 30.0 * s),
                (sign * 70.0 * s, top + 22.0 * s),
                (sign * 152.0 * s, top + 8.0 * s),
            )
            img += 1.3 * _bone(_tube_proj, X, Z, clav[0], clav[1], 6.5 * s)
            img += 1.3 * _bone(_tube_proj, X, Z, clav[1], clav[2], 6.0 * s)
            img += (MU["trabecular"] - soft) * _ellipse_proj(
                X, Z, (sign * 134.0 * s, top + 88.0 * s), (36.0 * s, 76.0 * s), 2.5, -sign * 12.0
            )
            img += _bone(
                _tube_proj,
                X,
                Z,
                (sign * 120.0 * s, top + 162.0 * s),
                (sign * 160.0 * s, top + 50.0 * s),
                4.0 * s,
            )
    else:
        fade = 1.0 / (1.0 + np.exp((Z - top - 30.0 * s) / (32.0 * s)))
        img += soft * 110.0 * s * fade * np.exp(-(((X - 10.0 * s) / (120.0 * s)) ** 2))
        for m, dy in ((1.0, 0.0), (1.08, 6.0)):
            img += 0.35 * _bone(
                _tube_proj,
                X,
                Z,
                (m * 62.0 * s + dy, top + 175.0 * s),
                (m * 96.0 * s + dy, top + 20.0 * s),
                5.0 * s,
            )
    return img


def _resize(img: np.ndarray, size: int, smooth: bool = False) -> np.ndarray:
    """Resample to ``size`` x ``size``: bicubic for detail, bilinear (cheaper) for smooth fields."""
    method = Image.BILINEAR if smooth else Image.BICUBIC
    return np.asarray(Image.fromarray(img.astype(np.float32, copy=False)).resize((size, size), method))


def _blur(img: np.ndarray) -> np.ndarray:
    """Detector blur: a [1, 2, 1] / 4 kernel along each axis, edges repeated (shifted adds, in place)."""
    for axis in (0, 1):
        src = img.copy()
        a = np.moveaxis(img, axis, 0)
        b = np.moveaxis(src, axis, 0)
        a *= 2.0
        a[1:] += b[:-1]
        a[:-1] += b[1:]
        a[0] += b[0]
        a[-1] += b[-1]
        img *= 0.25
    return img


def _render(
    anatomy: Anatomy,
    base: np.ndarray,
    line: np.ndarray,
    lung: np.ndarray,
    display: _Display,
    points: np.ndarray,
    view: str,
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Full-resolution image: vessels, texture, primary + scatter, quantum noise, blur, unsharp mask, display."""
    quarter = max(size // 4, 16)
    big = points[:, 3] >= 1.2
    mid = _resize(base, quarter) + _girdle(anatomy, view, (quarter, quarter))
    mid += _rib_projection(anatomy, view, (quarter, quarter))
    mid += ndimage.gaussian_filter(_splat(points[big], view, anatomy, quarter), 0.8)
    # Small vessels on a half-resolution grid: soft thin lines once upsampled, as on real films.
    half = _splat(points[~big], view, anatomy, size // 2)
    # Fine interstitial texture where the beam crosses aerated lung.
    texture = ndimage.gaussian_filter(rng.standard_normal((quarter, quarter), dtype=np.float32), 0.9)
    mid += 0.0011 * _resize(lung, quarter) * texture
    fine = _resize(mid, size) + _resize(half, size, smooth=True)
    np.negative(fine, out=fine)
    intensity = np.exp(fine, out=fine)  # primary
    intensity += _resize(display.scatter, size, smooth=True)
    photons = _PHOTONS * display.exposure * (1024.0 / size) ** 2
    noise = rng.standard_normal(intensity.shape, dtype=np.float32)
    noise *= np.sqrt(intensity * np.float32(1.0 / photons))
    intensity += noise
    intensity = _blur(intensity)
    np.maximum(intensity, 1e-4, out=intensity)
    dens = np.log(intensity, out=intensity)
    np.negative(dens, out=dens)
    coarse = -np.log(np.exp(-line) + display.scatter)
    v = anatomy.grid.voxel_mm
    smooth = ndimage.gaussian_filter(coarse, 12.0 / v, mode="nearest")
    broad = ndimage.gaussian_filter(coarse, 36.0 / v, mode="nearest")
    # Unsharp mask for detail, and dynamic range compression (large-scale density pulled towards the mean).
    dens *= 1.6
    dens -= _resize(0.6 * smooth + 0.12 * (broad - float(broad.mean())), size, smooth=True)
    return display.show(dens)
