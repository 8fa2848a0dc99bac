"""A procedural 3D thorax: one attenuation volume per synthetic patient.

Coordinates are patient millimetres: x from the patient's right (-) to left (+), y from anterior (-)
to posterior (+), z from the top of the field (0) downwards. The volume is indexed ``[z, y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HABITUS",
    "HABITUS_SHARES",
    "HEART_PITCH_DEG",
    "HEART_TILT_DEG",
    "SCOLIOSIS_SHARE",
    "MU",
    "Anatomy",
    "Grid",
    "Painter",
    "Patient",
    "body_extent",
    "build_anatomy",
    "grid_for",
    "heart_radii",
    "random_patient",
    "spine_center",
]

# Linear attenuation per mm at an effective ~60 keV (chest radiography at 110-125 kVp).
MU = {
    "air": 0.0,
    "lung": 0.0042,
    "fat": 0.0175,
    "soft": 0.0200,
    "blood": 0.0210,
    "fluid": 0.0205,
    "liver": 0.0215,
    "cartilage": 0.0225,
    "trabecular": 0.0265,
    "rib": 0.0560,  # average over a rib section, cortex included
    "cortical": 0.0500,
}


HABITUS = ("thin", "average", "obese")
HABITUS_SHARES = (0.2, 0.6, 0.2)
SCOLIOSIS_SHARE = 0.12  # patients with a mild thoracic curve (Cobb 8-20 degrees)


@dataclass(frozen=True)
class Patient:
    """The knobs that make one synthetic patient differ from another (how the films are taken is ``Exam``)."""

    seed: int
    sex: str = "M"  # "M" or "F": F is smaller and has breast shadows over the lower zones
    scale: float = 1.0  # overall body size
    inspiration: float = 0.0  # -1 (poor) .. +1 (deep): moves the domes and spreads the ribs
    heart_scale: float = 1.0  # heart size; cardiomegaly raises it
    soft_tissue_mm: float = 22.0  # chest-wall soft tissue thickness
    exposure: float = 1.0  # relative dose: scales the photon count (noise)
    habitus: str = "average"  # "thin", "average" or "obese": outline, fat, breasts and belly
    scoliosis_deg: float = 0.0  # Cobb angle of a mild thoracic curve; > 0 bulges to the patient's right
    dome_gap_mm: float = 14.0  # how far the left dome sits below the right (negative: left higher)


def random_patient(rng: np.random.Generator) -> Patient:
    """Draw a plausible adult; habitus and scoliosis come in the shares ``HABITUS_SHARES``/``SCOLIOSIS_SHARE``."""
    sex = "F" if rng.random() < 0.5 else "M"
    habitus = HABITUS[int(rng.choice(len(HABITUS), p=HABITUS_SHARES))]
    soft = {
        "thin": rng.uniform(7.0, 14.0),
        "average": np.clip(rng.normal(22.0, 5.0), 14.0, 34.0),
        "obese": rng.uniform(34.0, 56.0),
    }[habitus]
    size = {"thin": 0.97, "average": 1.0, "obese": 1.04}[habitus]
    scoliosis = rng.uniform(8.0, 20.0) * (1.0 if rng.random() < 0.5 else -1.0)
    curved = rng.random() < SCOLIOSIS_SHARE
    return Patient(
        seed=int(rng.integers(0, 2**31 - 1)),
        sex=sex,
        scale=float(rng.normal(0.93 if sex == "F" else 1.0, 0.05) * size),
        inspiration=float(np.clip(rng.normal(0.2, 0.45), -1.0, 1.0)),
        heart_scale=float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.14)),
        soft_tissue_mm=float(soft),
        exposure=float(np.exp(rng.normal(0.0, 0.3))),
        habitus=habitus,
        scoliosis_deg=float(scoliosis if curved else 0.0),
        dome_gap_mm=float(np.clip(rng.normal(14.0, 8.0), -6.0, 34.0)),
    )


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in patient millimetres; ``build_anatomy`` fits its depth to the body."""

    voxel_mm: float = 4.0  # coarse on purpose: fine detail (vessels, bones' edges) is drawn in 2D
    width_mm: float = 392.0  # x, centred on the midline
    depth_mm: float = 320.0  # y
    height_mm: float = 368.0  # z, from the top of the field
    y0_mm: float = -160.0  # patient y of the grid's anterior edge

    @property
    def shape(self) -> tuple[int, int, int]:
        v = self.voxel_mm
        return round(self.height_mm / v), round(self.depth_mm / v), round(self.width_mm / v)

    @property
    def lo(self) -> tuple[float, float]:
        """Patient (y, x) of the first voxel's edge."""
        return self.y0_mm, -self.width_mm / 2

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates along z, y and x."""
        nz, ny, nx = self.shape
        v = self.voxel_mm
        z = (np.arange(nz, dtype=np.float32) + 0.5) * v
        y = (np.arange(ny, dtype=np.float32) + 0.5) * v + self.y0_mm
        x = (np.arange(nx, dtype=np.float32) + 0.5) * v - self.width_mm / 2
        return z, y, x

    def index(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """Voxel indices (k, j, i) of patient points and whether each lies inside the grid."""
        v = self.voxel_mm
        k = np.floor(np.asarray(z) / v).astype(np.int64)
        j = np.floor((np.asarray(y) - self.y0_mm) / v).astype(np.int64)
        i = np.floor((np.asarray(x) + self.width_mm / 2) / v).astype(np.int64)
        nz, ny, nx = self.shape
        inside = (k >= 0) & (k < nz) & (j >= 0) & (j < ny) & (i >= 0) & (i < nx)
        return k, j, i, inside


@dataclass
class Anatomy:
    """One patient's volume plus the landmarks the findings, the skeleton and the truth table need."""

    patient: Patient
    grid: Grid
    mu: np.ndarray  # [z, y, x] float32 attenuation per mm
    lung: np.ndarray  # [z, y, x] bool, aerated lung before any finding
    heart: np.ndarray  # [z, y, x] bool
    cavity: np.ndarray  # [z, y, x] bool, inside the rib cage (lungs + mediastinum)
    px: np.ndarray  # [1, y, x] patient x of each column
    py: np.ndarray  # [1, y, x] patient y
    landmarks: dict[str, float] = field(default_factory=dict)
    # Rib samples kept out of ``mu`` so each view can project them sharply through a diverging beam:
    # [n, 4] patient x, y, z (mm) and the line integral each adds (see ``sample_data.skeleton``).
    ribs: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def thorax(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inner rib-cage semi-axes (a along x, b along y) and centre y at heights ``z``."""
        return _cage_axes(z, self.landmarks)

    def dome(self) -> np.ndarray:
        """Diaphragm surface height per (y, x) column, ``[1, y, x]``."""
        return _dome_surface(self.px, self.py, self.landmarks)


def _cage_axes(z: np.ndarray, lm: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner rib-cage semi-axes (a, b) and centre y at heights ``z``.

    The cage is widest just above the domes and closes over the apices. Its depth grows steadily
    from the top, and it grows forwards more than backwards (the spine anchors the back), so the
    anterior chest wall and sternum slope forwards going down, as a lateral film shows.
    """
    t = np.clip((z - lm["cage_top"]) / (lm["cage_widest"] - lm["cage_top"]), 0.0, 1.0)
    cap = np.sqrt(np.clip(1.0 - (1.0 - t) ** 2, 0.0, 1.0))
    below = np.clip((z - lm["cage_widest"]) / 200.0, 0.0, 1.0)
    a = lm["cage_a"] * (0.08 + 0.92 * cap) * (1.0 - 0.08 * below)
    deep = np.minimum(0.15 + 0.85 * cap, 0.45 + 0.55 * t**0.6)
    b = lm["cage_b"] * deep * (1.0 - 0.05 * below)
    yc = lm["cage_yc"] + 0.6 * (lm["cage_b"] - b)
    return a.astype(np.float32), b.astype(np.float32), yc.astype(np.float32)


def _dome_surface(px: np.ndarray, py: np.ndarray, lm: dict[str, float]) -> np.ndarray:
    """Each hemidiaphragm is a dome peaking mid-clavicular, dropping most at the back (the recesses)."""
    domes = []
    for side, sign in (("r", -1.0), ("l", 1.0)):
        dx = (px - sign * lm["dome_x"]) / (lm["cage_a"] * 0.62)
        dy = py - lm["dome_y"]
        post = np.clip(dy / lm["cage_b"], 0.0, None)
        ant = np.clip(-dy / lm["cage_b"], 0.0, None)
        domes.append(lm[f"dome_{side}"] + 80.0 * dx**2 + 95.0 * post**2 + 25.0 * ant**2)
    w = 1.0 / (1.0 + np.exp(-px / 12.0))  # blend right -> left across the midline
    return (domes[0] * (1.0 - w) + domes[1] * w).astype(np.float32)


def _landmarks(p: Patient) -> dict[str, float]:
    s = p.scale
    insp = p.inspiration
    cage_top = 30.0 * s + 2.0  # the field starts a little above the apices, as on a collimated PA
    dome_r = cage_top + (232.0 + 26.0 * insp) * s
    wall = p.soft_tissue_mm * s
    thoracic = dome_r + 90.0 * s - (cage_top - 30.0 * s)  # length of the spine's curve in the field
    return {
        "scale": s,
        "cage_top": cage_top,  # lung apices
        "cage_widest": dome_r + 10.0,
        "cage_a": 138.0 * s * (1.0 + 0.03 * insp),
        "cage_b": 92.0 * s * (0.94 if p.sex == "F" else 1.0) * (1.0 + 0.04 * insp),
        "cage_yc": 8.0 * s,
        "dome_r": dome_r,
        "dome_l": dome_r + p.dome_gap_mm * s,
        "dome_x": 68.0 * s,
        "dome_y": -8.0 * s,
        "rib_spacing": (22.0 + 2.5 * insp) * s,
        "carina": cage_top + 105.0 * s,
        "spine_y": 60.0 * s,
        "spine_z0": cage_top - 30.0 * s,
        "spine_z1": cage_top - 30.0 * s + thoracic,
        # A single sine curve over the thoracic spine; its steepest slope gives half the Cobb angle.
        "scoliosis": -thoracic * np.tan(np.deg2rad(p.scoliosis_deg) / 2.0) / np.pi,
        "kyphosis": 16.0 * s,
        "heart_x": 22.0 * s,
        "heart_y": -22.0 * s,
        "wall": wall,
        "wall_back": 0.6 * wall + 30.0 * s,  # paraspinal muscles and scapulae: the back is thicker
        "fat": {"thin": 0.05, "average": 0.14, "obese": 0.32}[p.habitus],
        "outline_p": {"thin": 2.6, "average": 2.5, "obese": 2.3}[p.habitus],
        "belly": {"thin": 0.0, "average": 8.0, "obese": 45.0}[p.habitus] * s,
        "breast": {"thin": 0.75, "average": 1.0, "obese": 1.35}[p.habitus] * (p.sex == "F"),
    }


def spine_center(z: np.ndarray, lm: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Patient (x, y) of the vertebral bodies' centre line: kyphosis backwards, scoliosis sideways."""
    t = np.clip((np.asarray(z, np.float32) - lm["spine_z0"]) / (lm["spine_z1"] - lm["spine_z0"]), 0.0, 1.0)
    bend = np.sin(np.pi * t)
    return lm["scoliosis"] * bend, lm["spine_y"] + lm["kyphosis"] * (bend - 0.5)


def body_extent(z: np.ndarray, lm: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body half-width, front y and back y at heights ``z`` (neck above the cage, belly below the domes)."""
    s = lm["scale"]
    z = np.asarray(z, np.float32)
    a, b, yc = _cage_axes(z, lm)
    top = lm["cage_top"]
    neck = 58.0 * s + 40.0 * s * np.clip((z - 40.0 * s) / (top + 20.0 - 40.0 * s), 0.0, 1.0)
    half = np.where(z < top + 20.0, np.minimum(neck, a + lm["wall"] + 8.0), a + lm["wall"] + 8.0)
    half = np.maximum(half, neck)
    belly = lm["belly"] * np.clip((z - lm["dome_r"]) / (90.0 * s), 0.0, 1.0)
    front = np.minimum(yc - b - lm["wall"] - belly, 0.6 * lm["spine_y"] - 0.75 * neck)
    back = np.maximum(yc + b + lm["wall_back"], lm["spine_y"] + 0.5 * neck)
    return half.astype(np.float32), front.astype(np.float32), back.astype(np.float32)


HEART_TILT_DEG = -28.0
HEART_PITCH_DEG = 24.0  # the apex points forwards and down: on the lateral the heart leans on the sternum


def heart_radii(lm: dict[str, float], heart_scale: float) -> tuple[float, float, float]:
    """Heart ellipsoid semi-axes; enlargement is mostly transverse, as on a real PA film."""
    s = lm["scale"]
    return 68.0 * s * heart_scale, 66.0 * s * heart_scale**0.5, 54.0 * s * heart_scale**0.7


class Painter:
    """Paints soft-edged primitives into a sub-box of the volume (never loops over voxels)."""

    def __init__(self, grid: Grid, mu: np.ndarray) -> None:
        self.grid = grid
        self.mu = mu
        self.z, self.y, self.x = grid.axes()

    def box(self, center: tuple[float, float, float], reach: float):
        """Slices of the grid around a patient point, and patient coordinates inside them."""
        cx, cy, cz = center
        v = self.grid.voxel_mm
        nz, ny, nx = self.mu.shape

        def span(c: float, lo: float, n: int) -> slice:
            i0 = int(np.clip(np.floor((c - reach - lo) / v), 0, n))
            i1 = int(np.clip(np.ceil((c + reach - lo) / v) + 1, 0, n))
            return slice(i0, i1)

        sz = span(cz, 0.0, nz)
        sy = span(cy, self.grid.y0_mm, ny)
        sx = span(cx, -self.grid.width_mm / 2, nx)
        return (sz, sy, sx), self.x[sx][None, None, :], self.y[sy][None, :, None], self.z[sz][:, None, None]

    def ellipsoid(
        self,
        center: tuple[float, float, float],
        radii: tuple[float, float, float],
        tilt_deg: float = 0.0,
        pitch_deg: float = 0.0,
    ):
        """Soft occupancy in [0, 1] of an ellipsoid, tilted in the frontal (x-z) plane by ``tilt_deg``
        and then in the sagittal (y-z) plane by ``pitch_deg`` (positive: its front end lower)."""
        sl, px, py, pz = self.box(center, max(radii) + 2 * self.grid.voxel_mm)
        t, q = np.deg2rad(tilt_deg), np.deg2rad(pitch_deg)
        dx, dy, dz = px - center[0], py - center[1], pz - center[2]
        dy, dz = dy * np.cos(q) + dz * np.sin(q), -dy * np.sin(q) + dz * np.cos(q)
        u = dx * np.cos(t) + dz * np.sin(t)
        w = -dx * np.sin(t) + dz * np.cos(t)
        r = np.sqrt((u / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (w / radii[2]) ** 2)
        edge = min(radii) / self.grid.voxel_mm
        return sl, np.clip((1.0 - r) * edge + 0.5, 0.0, 1.0).astype(np.float32)

    def capsule(self, a: tuple[float, float, float], b: tuple[float, float, float], radius: float):
        """Soft occupancy of a cylinder with round ends between points a and b."""
        pa, pb = np.asarray(a, np.float32), np.asarray(b, np.float32)
        mid = tuple(float(c) for c in (pa + pb) / 2)
        reach = float(np.linalg.norm(pb - pa)) / 2 + radius + 2 * self.grid.voxel_mm
        sl, px, py, pz = self.box(mid, reach)
        d = pb - pa
        t = ((px - pa[0]) * d[0] + (py - pa[1]) * d[1] + (pz - pa[2]) * d[2]) / float(d @ d)
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt(
            (px - pa[0] - t * d[0]) ** 2 + (py - pa[1] - t * d[1]) ** 2 + (pz - pa[2] - t * d[2]) ** 2
        )
        return sl, np.clip((radius - dist) / self.grid.voxel_mm + 0.5, 0.0, 1.0).astype(np.float32)

    def paint(self, sl, occ: np.ndarray, value: float) -> None:
        """Replace what is there by ``value`` where the primitive is."""
        sub = self.mu[sl]
        sub += (value - sub) * occ

    def paint_max(self, sl, occ: np.ndarray, value: float) -> None:
        """Raise attenuation to ``value`` without lowering denser tissue already there (bone)."""
        sub = self.mu[sl]
        np.maximum(sub, sub + (value - sub) * occ, out=sub)


def grid_for(patient: Patient) -> Grid:
    """The default grid, its depth fitted to this patient's body (front to back plus a margin)."""
    lm = _landmarks(patient)
    z, _, _ = Grid().axes()
    _, front, back = body_extent(z, lm)
    v = Grid.voxel_mm
    breast = 70.0 * lm["breast"] * lm["scale"]
    y0 = v * np.floor((float(front.min()) - breast - 8.0) / v)
    y1 = v * np.ceil((float(back.max()) + 8.0) / v)
    return Grid(depth_mm=float(y1 - y0), y0_mm=float(y0))


def _columns(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patient x and y of every (y, x) column, ``[1, y, x]`` each."""
    shape = (1, len(y), len(x))
    return (
        np.broadcast_to(x[None, None, :], shape).astype(np.float32),
        np.broadcast_to(y[None, :, None], shape).astype(np.float32),
    )


def build_anatomy(patient: Patient, grid: Grid | None = None) -> Anatomy:
    """Build the patient's attenuation volume; deterministic in ``patient``."""
    from sample_data.skeleton import rib_samples

    grid = grid or grid_for(patient)
    lm = _landmarks(patient)
    rng = np.random.default_rng(patient.seed)
    z, y, x = grid.axes()
    px, py = _columns(x, y)
    zz = z[:, None, None]
    s = patient.scale

    a, b, yc = _cage_axes(z, lm)
    a3, b3, yc3 = a[:, None, None], b[:, None, None], yc[:, None, None]
    cavity = ((px / a3) ** 2 + ((py - yc3) / b3) ** 2 < 1.0) & (zz > lm["cage_top"])

    # Body outline: a superellipse (flatter front and back than an ellipse, so a lateral film is dense
    # right up to its anterior and posterior skin), a neck above the cage and a belly below the domes.
    half, front, back = body_extent(z, lm)
    p = lm["outline_p"]
    # rb = (|x / half|^p + |(y - centre) / depth|^p)^(1/p), built from 2D terms (no powers over the volume).
    across = (np.abs(x)[None, :] / half[:, None]) ** p  # [z, x]
    along = (
        np.abs(y[None, :] - ((front + back) / 2)[:, None]) / ((back - front) / 2)[:, None]
    ) ** p  # [z, y]
    rb_p = along[:, :, None] + across[:, None, :]
    inside = rb_p < 1.0
    mu = np.zeros(inside.shape, np.float32)
    mu[inside] = MU["soft"]
    mu[inside & (rb_p > (1.0 - lm["fat"]) ** p)] = MU["fat"]

    dome = _dome_surface(px, py, lm)
    lung = cavity & (zz < dome)
    # Mediastinum: a narrow band in front of the spine; heart and great vessels shape its borders.
    # It and the spine's space lie within a central band of columns, which is all that is computed.
    cols = np.flatnonzero(np.abs(x) < 36.0 * s + abs(lm["scoliosis"]) + 8.0)
    band = slice(int(cols[0]), int(cols[-1]) + 1)
    px, py = px[:, :, band], py[:, :, band]
    upper = np.clip((lm["carina"] + 30.0 - z) / 60.0, 0.0, 1.0)
    # An elliptical cylinder in cross-section (sternum to spine), so the lungs meet it along curved
    # pleura and its projected borders fade in over a few millimetres instead of a hard straight edge.
    med_r = (20.0 + 12.0 * upper)[:, None, None] * s
    med_l = (17.0 + 9.0 * upper)[:, None, None] * s
    # Narrow in front (the anterior junction), so the lateral shows a retrosternal clear space.
    taper = np.clip(0.3 + 0.7 * (py - (yc3 - b3)) / (80.0 * s), 0.3, 1.0)
    sx, sy = spine_center(z, lm)
    sx, sy = sx[:, None, None], sy[:, None, None]
    across = np.where(px < sx, (px - sx) / med_r, (px - sx) / med_l) / taper
    along = (py - (lm["spine_y"] - 80.0 * s)) / (75.0 * s)
    mediastinum = (across**2 + along**2 < 1.0) & (py < sy - 10.0)
    # The vertebrae themselves are drawn per view (``sample_data.skeleton``); here only the space they fill.
    spine_zone = (((px - sx) / (28.0 * s)) ** 2 + ((py - sy) / (30.0 * s)) ** 2 < 1.0) | (
        (np.abs(px - sx) < 14.0 * s) & (py > sy)
    )
    lung[:, :, band] &= ~(mediastinum | spine_zone)
    mu[lung] = MU["lung"]

    px, py = _columns(x, y)
    below = (zz >= dome) & inside
    liver = below & (px < 40.0 * s) & (rb_p < (1.0 - lm["fat"]) ** p)
    mu[liver] = MU["liver"]

    painter = Painter(grid, mu)
    heart = _paint_organs(painter, patient, lm, grid)
    if lm["breast"] > 0:
        _paint_breasts(painter, lm, rng)
    ribs = rib_samples(lm, rng)
    return Anatomy(patient, grid, mu, lung & (mu == MU["lung"]), heart, cavity, px, py, lm, ribs)


def _paint_organs(painter: Painter, patient: Patient, lm: dict[str, float], grid: Grid) -> np.ndarray:
    """Heart (apex to the left and down), hila, aorta, SVC, trachea, bronchi and the stomach bubble."""
    s = patient.scale
    hz = lm["dome_l"] - 36.0 * s - 0.3 * max(lm["dome_l"] - lm["dome_r"] - 14.0 * s, 0.0)
    lm["heart_z"] = hz
    hc = (lm["heart_x"], lm["heart_y"], hz)
    sl, occ = painter.ellipsoid(
        hc, heart_radii(lm, patient.heart_scale), tilt_deg=HEART_TILT_DEG, pitch_deg=HEART_PITCH_DEG
    )
    painter.paint(sl, occ, MU["blood"])
    heart = np.zeros(grid.shape, dtype=bool)
    heart[sl] = occ > 0.5
    knob_z = lm["carina"] - 35.0 * s
    for center, radii in (
        ((28.0 * s, 8.0 * s, knob_z), (17.0 * s, 30.0 * s, 16.0 * s)),  # aortic knob
        ((-62.0 * s, 4.0 * s, lm["carina"] + 30.0 * s), (17.0 * s, 20.0 * s, 32.0 * s)),  # right hilum
        ((58.0 * s, 10.0 * s, lm["carina"] + 18.0 * s), (16.0 * s, 20.0 * s, 30.0 * s)),  # left hilum
        ((-24.0 * s, -12.0 * s, lm["carina"] - 20.0 * s), (16.0 * s, 34.0 * s, 60.0 * s)),  # SVC / ascending
        ((16.0 * s, -14.0 * s, lm["carina"] + 22.0 * s), (18.0 * s, 26.0 * s, 24.0 * s)),  # pulmonary trunk
        ((4.0 * s, 22.0 * s, hz - 42.0 * s), (34.0 * s, 24.0 * s, 26.0 * s)),  # left atrium
    ):
        sl, occ = painter.ellipsoid(center, radii)
        painter.paint(sl, occ, MU["blood"])
    # Ascending aorta, arch over the left bronchus, descending aorta in front of the spine.
    for a, b, r in (
        ((6.0 * s, -34.0 * s, hz - 40.0 * s), (10.0 * s, -22.0 * s, knob_z), 14.0 * s),
        ((10.0 * s, -22.0 * s, knob_z), (28.0 * s, 30.0 * s, knob_z + 4.0 * s), 12.0 * s),
        ((24.0 * s, 40.0 * s, knob_z), (20.0 * s, 45.0 * s, lm["dome_l"] + 20.0), 12.0 * s),
    ):
        sl, occ = painter.capsule(a, b, r)
        painter.paint(sl, occ, MU["blood"])
    sl, occ = painter.capsule((-2.0, 15.0 * s, 0.0), (-2.0, 22.0 * s, lm["carina"]), 9.0 * s)
    painter.paint(sl, occ, MU["air"])
    for sign, dz in ((-1.0, 25.0), (1.0, 40.0)):
        sl, occ = painter.capsule(
            (-2.0, 22.0 * s, lm["carina"]), (sign * 48.0 * s, 20.0 * s, lm["carina"] + dz * s), 6.0 * s
        )
        painter.paint(sl, occ, MU["air"])
    # Stomach gas under the left dome, an air cap above its fluid.
    sc = (62.0 * s, -5.0 * s, lm["dome_l"] + 34.0 * s)
    sl, occ = painter.ellipsoid(sc, (22.0 * s, 20.0 * s, 18.0 * s))
    pz = painter.z[sl[0]][:, None, None]
    painter.paint(sl, occ * (pz < sc[2] + 4.0), MU["air"])
    return heart


def _paint_breasts(painter: Painter, lm: dict[str, float], rng: np.random.Generator) -> None:
    """Never quite symmetric, and thinning towards the edge: a soft, doubled lateral contour."""
    s = lm["scale"]
    bz = lm["dome_r"] - 20.0 * s + 10.0 * (lm["breast"] - 1.0) * s
    _, b, yc = _cage_axes(np.array([bz], np.float32), lm)
    front = float(yc[0] - b[0]) - lm["wall"]
    for sign in (-1.0, 1.0):
        dy, dz, size = rng.normal(0.0, 5.0), rng.normal(0.0, 7.0), rng.uniform(0.85, 1.1) * s * lm["breast"]
        for grow, value in ((1.0, 0.6 * MU["fat"]), (0.8, MU["fat"])):
            sl, occ = painter.ellipsoid(
                (sign * 84.0 * s, front + 16.0 * s + dy, bz + dz),
                (46.0 * size * grow, 50.0 * size * grow, 60.0 * size * grow),
                pitch_deg=20.0,
            )
            painter.paint_max(sl, occ, value)
