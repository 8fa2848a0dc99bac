"""Digitally reconstructed radiographs of one phantom: a frontal (PA or AP) and a lateral of the same volume.

The volume is coarse (4 mm) and projected per view through a diverging beam (``sample_data.projection``);
detail is drawn in 2D on each detector: ribs, vertebrae and sternum (``skeleton``), the posed shoulder
girdle and arms (``girdle``), a branching pulmonary vessel tree, lung texture and devices
(``devices``). Scatter, quantum noise, detector blur, unsharp masking, dynamic range compression and a
display curve make it look like a processed CR/DX image (bright = dense); ``film`` then adds what real
films carry: framing, tilt, collimation borders, markers and burned-in text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from sample_data import devices as hardware
from sample_data.anatomy import MU, Anatomy, Patient, body_extent, build_anatomy
from sample_data.film import present
from sample_data.findings import Finding, PlacedFinding, apply_findings, cardiothoracic_ratio
from sample_data.girdle import Pose, draw_girdle_bones, draw_girdle_soft
from sample_data.projection import Beam, Canvas, project_volume, splat
from sample_data.skeleton import draw_spine, draw_sternum, vertebrae
from sample_data.variants import Exam, Film

__all__ = [
    "VIEWS",
    "VISIBILITY_THRESHOLD",
    "FindingTruth",
    "Radiographs",
    "exam_patient",
    "simulate",
]

VIEWS = ("frontal", "lateral")
VISIBILITY_THRESHOLD = 0.03  # peak display change (0..1 scale, 9 mm smoothing) a reader would notice
_SCATTER = 0.3  # scatter generated per attenuated primary, behind an anti-scatter grid
_SCATTER_SIGMA_MM = 45.0
_PHOTONS = 9000.0  # unattenuated quanta per 0.4 mm pixel at exposure 1
_VESSEL_STEP_MM = 0.8  # sampling step along the vessel centre lines
FIELD_MM = 360.0  # the frontal detector field (square), and the height of the lateral's
_SID_MM = {"PA": 1800.0, "AP_erect": 1250.0, "AP_supine": 1000.0, "lateral": 1800.0}


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
    density: float = 1.0

    @property
    def visible_frontal(self) -> bool:
        return self.contrast_frontal >= VISIBILITY_THRESHOLD

    @property
    def visible_lateral(self) -> bool:
        return self.contrast_lateral >= VISIBILITY_THRESHOLD

    @property
    def subtlety(self) -> str:
        """ "occult" (no view shows it), "subtle" (at most twice the threshold) or "obvious"."""
        best = max(self.contrast_frontal, self.contrast_lateral)
        return (
            "occult"
            if best < VISIBILITY_THRESHOLD
            else "subtle"
            if best < 2 * VISIBILITY_THRESHOLD
            else "obvious"
        )


@dataclass
class Radiographs:
    """The rendered views (float32 [0, 1], bright = dense) and what is known about them."""

    frontal: np.ndarray | None
    lateral: np.ndarray | None
    pixel_spacing_mm: float
    truth: list[FindingTruth]
    cardiothoracic_ratio: float
    exam: Exam = field(default_factory=Exam)
    annotated: dict[str, bool] = field(default_factory=dict)  # text or markers burned into each view


def exam_patient(patient: Patient, exam: Exam) -> Patient:
    """The patient as this exam finds them: supine films catch a shallower breath (higher domes)."""
    if exam.projection == "AP_supine":
        return replace(patient, inspiration=min(patient.inspiration, 0.6 * patient.inspiration - 0.45))
    if exam.projection == "AP_erect":
        return replace(patient, inspiration=min(patient.inspiration, 0.8 * patient.inspiration - 0.15))
    return patient


def simulate(
    patient: Patient,
    findings: list[Finding] | tuple[Finding, ...] = (),
    size: int = 1024,
    views: tuple[str, ...] = VIEWS,
    noise_seed: int | None = None,
    exam: Exam | None = None,
) -> Radiographs:
    """Build the patient, add the findings and render the requested views about ``size`` px tall.

    The frontal is ``size`` x ``size``; the lateral is as wide as its field (the chest's depth); an
    exam with a film look then frames and crops both. ``Exam()`` (the default) is a clean PA + lateral.
    """
    exam = exam or Exam()
    anatomy = build_anatomy(exam_patient(patient, exam))
    scene = _Scene(
        anatomy,
        apply_findings(anatomy, list(findings)),
        _vessel_tree(anatomy, np.random.default_rng([patient.seed, 5])),
        vertebrae(anatomy.landmarks, anatomy.grid.height_mm, np.random.default_rng([patient.seed, 3])),
        hardware.build(anatomy, exam.devices, np.random.default_rng([patient.seed, 17])),
        (anatomy.mu == MU["lung"]).astype(np.float32),
    )
    rng = np.random.default_rng([patient.seed, 11] if noise_seed is None else [noise_seed, 13])
    pixel = FIELD_MM / size
    images: dict[str, np.ndarray] = {}
    annotated: dict[str, bool] = {}
    contrast: dict[str, list[float]] = {}
    for name, beam in _beams(anatomy, exam).items():
        view = _expose(scene, beam, _pose(exam, name), patient.exposure)
        contrast[name] = [view.visibility(p.delta) for p in scene.placed]
        if name in views:
            img = _render(scene, view, exam.film, pixel, rng)
            if name == "lateral" and exam.facing == "right":
                img = np.ascontiguousarray(img[:, ::-1])
            images[name], annotated[name] = present(img, name, exam, pixel)
    placed = scene.placed
    truth = [
        FindingTruth(
            p.finding.label,
            p.finding.site,
            p.finding.severity,
            tuple(round(c, 1) for c in p.position_mm),
            round(p.size, 3),
            round(cf, 4),
            round(cl, 4),
            p.finding.density,
        )
        for p, cf, cl in zip(placed, contrast["frontal"], contrast["lateral"], strict=True)
    ]
    return Radiographs(
        images.get("frontal"),
        images.get("lateral"),
        pixel,
        truth,
        cardiothoracic_ratio(anatomy),
        exam,
        annotated,
    )


def _pose(exam: Exam, view: str) -> Pose:
    if view == "lateral":
        return Pose(exam.arms, exam.arm_angle_deg)
    return Pose("AP" if exam.ap else "PA")


def _beams(anatomy: Anatomy, exam: Exam) -> dict[str, Beam]:
    """Each view's geometry: PA with the detector in front, AP with it behind (closer source), and a
    left lateral whose field spans the chest's depth with a margin drawn from the film's seed."""
    g, lm = anatomy.grid, anatomy.landmarks
    z, y, _ = g.axes()
    chest = (z > lm["cage_top"]) & (z < lm["dome_r"] + 40.0)
    body = np.flatnonzero((anatomy.mu[chest] > 0).any(axis=(0, 2)))  # y indices with tissue (breasts too)
    front_min, back_max = float(y[body[0]]) - g.voxel_mm / 2, float(y[body[-1]]) + g.voxel_mm / 2
    half, _, _ = body_extent(z[chest], lm)
    zc = (lm["cage_top"] + lm["dome_r"]) / 2
    frontal = Beam(
        "frontal",
        projection="AP" if exam.ap else "PA",
        rotation_deg=exam.rotation_deg,
        sid_mm=_SID_MM[exam.projection],
        detector_mm=(back_max if exam.ap else -front_min) + 12.0,
        zc_mm=zc,
        across0_mm=-FIELD_MM / 2,
        across_mm=FIELD_MM,
        height_mm=FIELD_MM,
    )
    rng = np.random.default_rng([exam.film.seed, 2])
    depth = back_max - front_min
    fill, ahead, aspect = rng.uniform(0.86, 0.97), rng.uniform(0.3, 0.7), rng.uniform(0.8, 1.0)
    width = depth / fill
    # Collimated to the chest, apices to the posterior costophrenic recesses: a small chest gets a
    # shorter field, and a slim one some air in front and behind, so laterals stay roughly square.
    top = rng.uniform(0.0, 0.5) * lm["cage_top"]
    height = float(np.clip(width / aspect, lm["dome_l"] + 100.0 - top, FIELD_MM - top))
    width = g.voxel_mm * np.ceil(max(width, 0.78 * height) / g.voxel_mm)
    lateral = Beam(
        "lateral",
        rotation_deg=exam.lateral_rotation_deg,
        sid_mm=_SID_MM["lateral"],
        detector_mm=float(half.max()) + 12.0,
        zc_mm=zc,
        across0_mm=float(front_min - ahead * (width - depth)),
        across_mm=float(width),
        height_mm=height,
        top_mm=float(top),
    )
    return {"frontal": frontal, "lateral": lateral}


def _project(anatomy: Anatomy, volume: np.ndarray, beam: Beam, shape: tuple[int, int]) -> np.ndarray:
    g = anatomy.grid
    return project_volume(volume, g.voxel_mm, g.lo, beam, shape)


def _bones(
    anatomy: Anatomy, beam: Beam, shape: tuple[int, int], verts: np.ndarray, pose: Pose, detail: bool = True
) -> np.ndarray:
    """Spine, sternum and the posed shoulder girdle on an image of ``shape`` (line integrals).

    Without ``detail`` (the coarse image that fits the display) the vertebrae's small posterior
    elements are left out.
    """
    canvas = Canvas(beam, shape)
    lm = anatomy.landmarks
    draw_spine(canvas, verts, lm, detail)
    draw_sternum(canvas, lm)
    draw_girdle_bones(canvas, lm, pose)
    return canvas.img


def _soft(anatomy: Anatomy, beam: Beam, shape: tuple[int, int], pose: Pose) -> np.ndarray:
    canvas = Canvas(beam, shape)
    draw_girdle_soft(canvas, anatomy.landmarks, pose)
    return canvas.img


def _ribs(anatomy: Anatomy, beam: Beam, shape: tuple[int, int]) -> np.ndarray:
    """Ribs through the diverging beam: the side far from the detector is magnified more, so left and
    right ribs do not coincide on the lateral and posterior ribs look broader than anterior ones."""
    img = splat(beam, anatomy.ribs, shape)
    pw = beam.across_mm / shape[1]
    # Samples are 2.5 mm apart: a little blur closes the gaps on fine grids. On the lateral the ribs sit
    # far from the detector (focal-spot blur) behind the thickest soft tissue: faint and soft-edged on
    # real films, which the empirical factor matches.
    if beam.view == "frontal":
        return ndimage.gaussian_filter(img, max(0.5, 1.2 / pw))
    return 0.65 * ndimage.gaussian_filter(img, 3.0 / pw)


class _Display:
    """Scatter, log and the display curve, fitted once per view on the coarse projection."""

    def __init__(
        self, line: np.ndarray, lung: np.ndarray, exposure: float, voxel_mm: float, rows: slice, film: Film
    ) -> None:
        primary = np.exp(-line)
        self.scatter = _SCATTER * ndimage.gaussian_filter(
            primary * line, _SCATTER_SIGMA_MM / voxel_mm, mode="nearest"
        )
        dens = -np.log(primary + self.scatter)
        # Window on the chest as clinical processing does: from the lung fields (where the beam crosses
        # at least 30 mm of aerated lung) to the densest body part, whatever the arms and edges add.
        body = dens[rows][line[rows] > 1.0]
        fields = dens[rows][lung[rows] > 30.0]
        low = fields if fields.size > 20 else body
        self.lo = float(np.percentile(low, 5.0)) if low.size else 0.0
        self.hi = 1.03 * float(np.percentile(body, 99.9)) if body.size else 1.0
        self.exposure = exposure
        self.voxel_mm = voxel_mm
        self.film = film
        zero = self._curve(np.float32(0.0), raw=True)
        self.base, self.span = zero, self._curve(np.float32(self.hi), raw=True) - zero

    def restyle(self, film: Film) -> _Display:
        """The same fit shown with another film's curve."""
        other = object.__new__(_Display)
        other.__dict__.update(self.__dict__)
        other.film = film
        zero = other._curve(np.float32(0.0), raw=True)
        other.base, other.span = zero, other._curve(np.float32(other.hi), raw=True) - zero
        return other

    def _curve(self, dens: np.ndarray, raw: bool = False) -> np.ndarray:
        y = np.array(dens, dtype=np.float32)  # a copy, then in place: this runs on full-size images
        y -= self.lo + self.film.level * (self.hi - self.lo)
        y *= -self.film.contrast / (self.hi - self.lo)
        np.exp(y, out=y)
        y += 1.0
        np.reciprocal(y, out=y)
        if raw:
            return y
        y -= self.base
        y *= 1.0 / self.span
        np.clip(y, 0.0, 1.0, out=y)
        return np.power(y, self.film.gamma, out=y)

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

    Returns points sampled along the segments, ``[n, 4]``: patient x, y, z and radius.
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
    return np.concatenate(out).astype(np.float32)


def _aerated(anatomy: Anatomy, pts: np.ndarray) -> np.ndarray:
    """Whether patient points ``[..., 3]`` lie in aerated lung (nearest voxel)."""
    k, j, i, inside = anatomy.grid.index(pts[..., 0], pts[..., 1], pts[..., 2])
    ok = np.zeros(k.shape, dtype=bool)
    ok[inside] = anatomy.mu[k[inside], j[inside], i[inside]] == MU["lung"]
    return ok


@dataclass
class _Scene:
    """One patient as every view sees it: the volume, the findings and what is drawn per view."""

    anatomy: Anatomy
    placed: list[PlacedFinding]
    vessels: np.ndarray  # [n, 4] patient x, y, z, radius
    verts: np.ndarray  # vertebral bodies (``sample_data.skeleton.vertebrae``)
    kit: hardware.Kit
    aerated: np.ndarray  # [z, y, x] float32, 1 in aerated lung


@dataclass
class _View:
    """One view's coarse projection and display fit, from which findings are judged and films drawn."""

    beam: Beam
    pose: Pose
    base: np.ndarray  # the volume's line integrals
    line: np.ndarray  # plus the 2D bones and soft parts
    lung: np.ndarray  # path length through aerated lung, mm
    display: _Display  # fitted with the reference curve (``Film()``)
    anatomy: Anatomy

    def visibility(self, delta: np.ndarray) -> float:
        """How visible a finding's change of the volume is on this view (see ``_Display.visibility``)."""
        return self.display.visibility(self.line, _project(self.anatomy, delta, self.beam, self.line.shape))


def _expose(scene: _Scene, beam: Beam, pose: Pose, exposure: float) -> _View:
    """The view's coarse line integrals (volume, bones, soft parts), lung path and display fit."""
    anatomy, lm = scene.anatomy, scene.anatomy.landmarks
    v = anatomy.grid.voxel_mm
    coarse = beam.shape(v)
    base = ndimage.gaussian_filter(_project(anatomy, anatomy.mu, beam, coarse), 0.5)
    line = base + _bones(anatomy, beam, coarse, scene.verts, pose, detail=False)
    line += _soft(anatomy, beam, coarse, pose) + _ribs(anatomy, beam, coarse)
    lung = _project(anatomy, scene.aerated, beam, coarse)
    # Window on the lower lung fields (the lateral's reaching a little into the upper abdomen).
    low = lm["dome_l"] + (30.0 if beam.view == "lateral" else 0.0)
    rows = slice(int((lm["carina"] - beam.top_mm) / v), int((low - beam.top_mm) / v))
    return _View(beam, pose, base, line, lung, _Display(line, lung, exposure, v, rows, Film()), anatomy)


def _vessels(beam: Beam, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Line-integral image of the vessels; weighted twice their physical contrast, as clinical edge
    processing makes them stand out."""
    weight = 2.0 * (MU["blood"] - MU["lung"]) * np.pi * points[:, 3] ** 2 * _VESSEL_STEP_MM
    return splat(beam, np.concatenate([points[:, :3], weight[:, None]], axis=1), shape)


def _resize(img: np.ndarray, shape: tuple[int, int], smooth: bool = False) -> np.ndarray:
    """Resample to ``shape`` (rows, cols): bicubic for detail, bilinear (cheaper) for smooth fields."""
    method = Image.BILINEAR if smooth else Image.BICUBIC
    im = Image.fromarray(img.astype(np.float32, copy=False))
    return np.asarray(im.resize((shape[1], shape[0]), method))


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


def _render(scene: _Scene, view: _View, film: Film, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Full-resolution image: vessels, texture, primary + scatter, quantum noise, blur, unsharp mask, display."""
    anatomy, beam, pose = scene.anatomy, view.beam, view.pose
    display = view.display.restyle(film)
    full = beam.shape(pixel_mm)
    quarter = (max(full[0] // 4, 16), max(full[1] // 4, 16))
    half = (max(full[0] // 2, 16), max(full[1] // 2, 16))
    big = scene.vessels[:, 3] >= 1.2
    mid = _resize(view.base, quarter) + _soft(anatomy, beam, quarter, pose) + _ribs(anatomy, beam, quarter)
    mid += ndimage.gaussian_filter(_vessels(beam, scene.vessels[big], quarter), 0.8)
    # Small vessels and bones on a half-resolution grid: soft thin lines once upsampled, as on real films.
    fine_half = _vessels(beam, scene.vessels[~big], half) + _bones(anatomy, beam, half, scene.verts, pose)
    # Fine interstitial texture where the beam crosses aerated lung.
    texture = ndimage.gaussian_filter(rng.standard_normal(quarter, dtype=np.float32), 0.9)
    mid += 0.0011 * _resize(view.lung, quarter) * texture
    fine_half += _resize(mid, half)
    fine = np.negative(_resize(fine_half, full))  # minus the line integrals, a fresh writable array
    if len(scene.kit.points):
        fine -= hardware.draw(scene.kit, beam, full)
    intensity = np.exp(fine, out=fine)  # primary
    intensity += _resize(display.scatter, full, smooth=True)
    # Automatic exposure control: thicker chests (obese, laterals) get more dose behind the lungs.
    aec = float(np.exp(np.clip(display.lo - 2.2, 0.0, 3.0)))
    photons = _PHOTONS * display.exposure * aec * (pixel_mm / 0.381) ** 2  # 0.381 mm: 1024 px over 390 mm
    noise = rng.standard_normal(intensity.shape, dtype=np.float32)
    noise *= np.sqrt(intensity * np.float32(1.0 / photons))
    intensity += noise
    intensity = _blur(intensity)
    np.maximum(intensity, 1e-4, out=intensity)
    dens = np.log(intensity, out=intensity)
    np.negative(dens, out=dens)
    coarse = -np.log(np.exp(-view.line) + display.scatter)
    v = anatomy.grid.voxel_mm
    smooth = ndimage.gaussian_filter(coarse, 12.0 / v, mode="nearest")
    broad = ndimage.gaussian_filter(coarse, 36.0 / v, mode="nearest")
    # Unsharp mask for detail, and dynamic range compression (large-scale density pulled towards the mean).
    gain, squeeze = display.film.sharpen, display.film.equalize + (0.05 if beam.view == "lateral" else 0.0)
    dens *= gain
    dens -= _resize((gain - 1.0) * smooth + squeeze * (broad - float(broad.mean())), full, smooth=True)
    return display.show(dens)
