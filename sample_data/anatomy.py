"""A procedural 3D thorax: one attenuation volume per synthetic patient.

Coordinates are patient millimetres: x from the patient's right (-) to left (+), y from anterior (-)
to posterior (+), z from the top of the field (0) downwards. The volume is indexed ``[z, y, x]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HEART_TILT_DEG",
    "MU",
    "Anatomy",
    "Grid",
    "Painter",
    "Patient",
    "build_anatomy",
    "heart_radii",
    "random_patient",
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


@dataclass(frozen=True)
class Patient:
    """The knobs that make one synthetic patient differ from another."""

    seed: int
    sex: str = "M"  # "M" or "F": F is smaller and has breast shadows over the lower zones
    scale: float = 1.0  # overall body size
    inspiration: float = 0.0  # -1 (poor) .. +1 (deep): moves the domes and spreads the ribs
    rotation_deg: float = 0.0  # rotation about the vertical axis (malpositioning)
    heart_scale: float = 1.0  # heart size; cardiomegaly raises it
    soft_tissue_mm: float = 22.0  # chest-wall soft tissue thickness
    exposure: float = 1.0  # relative dose: scales the photon count (noise)


def random_patient(rng: np.random.Generator) -> Patient:
    """Draw a plausible adult."""
    sex = "F" if rng.random() < 0.5 else "M"
    return Patient(
        seed=int(rng.integers(0, 2**31 - 1)),
        sex=sex,
        scale=float(rng.normal(0.93 if sex == "F" else 1.0, 0.05)),
        inspiration=float(np.clip(rng.normal(0.2, 0.45), -1.0, 1.0)),
        rotation_deg=float(rng.normal(0.0, 2.5)),
        heart_scale=float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.07)),
        soft_tissue_mm=float(np.clip(rng.normal(22.0, 7.0), 10.0, 45.0)),
        exposure=float(np.exp(rng.normal(0.0, 0.3))),
    )


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in patient millimetres."""

    voxel_mm: float = 4.0  # coarse on purpose: fine detail (vessels, bones' edges) is drawn in 2D
    width_mm: float = 390.0  # x
    depth_mm: float = 320.0  # y
    height_mm: float = 396.0  # z

    @property
    def shape(self) -> tuple[int, int, int]:
        v = self.voxel_mm
        return round(self.height_mm / v), round(self.depth_mm / v), round(self.width_mm / v)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates along z, y and x."""
        nz, ny, nx = self.shape
        v = self.voxel_mm
        z = (np.arange(nz, dtype=np.float32) + 0.5) * v
        y = (np.arange(ny, dtype=np.float32) + 0.5) * v - self.depth_mm / 2
        x = (np.arange(nx, dtype=np.float32) + 0.5) * v - self.width_mm / 2
        return z, y, x


@dataclass
class Anatomy:
    """One patient's volume plus the landmarks the findings and the truth table need."""

    patient: Patient
    grid: Grid
    mu: np.ndarray  # [z, y, x] float32 attenuation per mm
    lung: np.ndarray  # [z, y, x] bool, aerated lung before any finding
    heart: np.ndarray  # [z, y, x] bool
    cavity: np.ndarray  # [z, y, x] bool, inside the rib cage (lungs + mediastinum)
    px: np.ndarray  # [1, y, x] patient x of each column (rotation applied)
    py: np.ndarray  # [1, y, x] patient y
    landmarks: dict[str, float] = field(default_factory=dict)
    # Rib samples kept out of ``mu`` so each view can project them sharply through a diverging beam:
    # [n, 4] grid x, grid y, z (mm) and the line integral each adds (see ``_rib_samples``).
    ribs: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def thorax(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inner rib-cage semi-axes (a along x, b along y) at heights ``z``."""
        return _cage_axes(z, self.landmarks)

    def dome(self) -> np.ndarray:
        """Diaphragm surface height per (y, x) column, ``[1, y, x]``."""
        return _dome_surface(self.px, self.py, self.landmarks)


def _cage_axes(z: np.ndarray, lm: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.clip((z - lm["cage_top"]) / (lm["cage_widest"] - lm["cage_top"]), 0.0, 1.0)
    cap = np.sqrt(np.clip(1.0 - (1.0 - t) ** 2, 0.0, 1.0))
    below = np.clip((z - lm["cage_widest"]) / 200.0, 0.0, 1.0)
    a = lm["cage_a"] * (0.08 + 0.92 * cap) * (1.0 - 0.08 * below)
    b = lm["cage_b"] * (0.15 + 0.85 * cap) * (1.0 - 0.05 * below)
    return a.astype(np.float32), b.astype(np.float32)


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
    return {
        "scale": s,
        "cage_top": cage_top,  # lung apices
        "cage_widest": dome_r + 10.0,
        "cage_a": 138.0 * s * (1.0 + 0.03 * insp),
        "cage_b": 92.0 * s * (0.94 if p.sex == "F" else 1.0) * (1.0 + 0.04 * insp),
        "cage_yc": 8.0 * s,
        "dome_r": dome_r,
        "dome_l": dome_r + 14.0 * s,
        "dome_x": 68.0 * s,
        "dome_y": -8.0 * s,
        "rib_spacing": (22.0 + 2.5 * insp) * s,
        "carina": cage_top + 105.0 * s,
        "spine_y": 62.0 * s,
        "heart_x": 22.0 * s,
        "heart_y": -22.0 * s,
    }


HEART_TILT_DEG = -28.0


def heart_radii(lm: dict[str, float], heart_scale: float) -> tuple[float, float, float]:
    """Heart ellipsoid semi-axes; enlargement is mostly transverse, as on a real PA film."""
    s = lm["scale"]
    return 68.0 * s * heart_scale, 60.0 * s * heart_scale**0.5, 58.0 * s * heart_scale**0.7


class Painter:
    """Paints soft-edged primitives into a sub-box of the volume (never loops over voxels)."""

    def __init__(self, grid: Grid, mu: np.ndarray, rot: float) -> None:
        self.grid = grid
        self.mu = mu
        self.z, self.y, self.x = grid.axes()
        self.cos, self.sin = float(np.cos(rot)), float(np.sin(rot))

    def box(self, center: tuple[float, float, float], reach: float):
        """Slices of the grid around a patient point, and patient coordinates inside them."""
        cx, cy, cz = center
        gx = cx * self.cos - cy * self.sin
        gy = cx * self.sin + cy * self.cos
        v = self.grid.voxel_mm
        nz, ny, nx = self.mu.shape

        def span(c: float, lo: float, n: int) -> slice:
            i0 = int(np.clip(np.floor((c - reach - lo) / v), 0, n))
            i1 = int(np.clip(np.ceil((c + reach - lo) / v) + 1, 0, n))
            return slice(i0, i1)

        sz = span(cz, 0.0, nz)
        sy = span(gy, -self.grid.depth_mm / 2, ny)
        sx = span(gx, -self.grid.width_mm / 2, nx)
        zz = self.z[sz][:, None, None]
        yy = self.y[sy][None, :, None]
        xx = self.x[sx][None, None, :]
        px = xx * self.cos + yy * self.sin
        py = -xx * self.sin + yy * self.cos
        return (sz, sy, sx), px, py, zz

    def ellipsoid(
        self,
        center: tuple[float, float, float],
        radii: tuple[float, float, float],
        tilt_deg: float = 0.0,
    ):
        """Soft occupancy in [0, 1] of an ellipsoid, tilted in the frontal (x-z) plane."""
        sl, px, py, pz = self.box(center, max(radii) + 2 * self.grid.voxel_mm)
        t = np.deg2rad(tilt_deg)
        dx, dy, dz = px - center[0], py - center[1], pz - center[2]
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


def build_anatomy(patient: Patient, grid: Grid | None = None) -> Anatomy:
    """Build the patient's attenuation volume; deterministic in ``patient``."""
    grid = grid or Grid()
    lm = _landmarks(patient)
    rng = np.random.default_rng(patient.seed)
    z, y, x = grid.axes()
    rot = np.deg2rad(patient.rotation_deg)
    px = (x[None, :] * np.cos(rot) + y[:, None] * np.sin(rot))[None].astype(np.float32)  # [1, y, x]
    py = (-x[None, :] * np.sin(rot) + y[:, None] * np.cos(rot))[None].astype(np.float32)
    zz = z[:, None, None]
    s = patient.scale

    a, b = _cage_axes(z, lm)
    a3, b3 = a[:, None, None], b[:, None, None]
    rho = np.sqrt((px / a3) ** 2 + ((py - lm["cage_yc"]) / b3) ** 2)
    cavity = (rho < 1.0) & (zz > lm["cage_top"])

    # Body outline: chest wall over the cage and a neck above it; the shoulders are painted later.
    wall = patient.soft_tissue_mm * s
    neck = 58.0 * s + 40.0 * s * np.clip((z - 40.0 * s) / (lm["cage_top"] + 20.0 - 40.0 * s), 0.0, 1.0)
    body_a = np.where(z < lm["cage_top"] + 20.0, np.minimum(neck, a + wall + 8.0), a + wall + 8.0)
    body_a = np.maximum(body_a, neck)[:, None, None]
    # The back (paraspinal muscles, scapulae) is thicker than the front: the body sits a little back.
    body_b = np.maximum(b + wall + 12.0 * s, 0.75 * neck + 10.0)[:, None, None]
    rb = np.sqrt((px / body_a) ** 2 + ((py - lm["cage_yc"] - 12.0 * s) / body_b) ** 2)
    mu = np.where(rb < 1.0, MU["soft"], MU["air"]).astype(np.float32)
    mu[(rb < 1.0) & (rb > 0.86)] = MU["fat"]

    dome = _dome_surface(px, py, lm)
    lung = cavity & (zz < dome)
    # Mediastinum: a narrow band in front of the spine; heart and great vessels shape its borders.
    upper = np.clip((lm["carina"] + 30.0 - z) / 60.0, 0.0, 1.0)
    # An elliptical cylinder in cross-section (sternum to spine), so the lungs meet it along curved
    # pleura and its projected borders fade in over a few millimetres instead of a hard straight edge.
    med_r = (20.0 + 12.0 * upper)[:, None, None] * s
    med_l = (17.0 + 9.0 * upper)[:, None, None] * s
    # Narrow in front (the anterior junction), so the lateral shows a retrosternal clear space.
    taper = np.clip(0.3 + 0.7 * (py + lm["cage_b"] - lm["cage_yc"]) / (80.0 * s), 0.3, 1.0)
    across = np.where(px < 0, px / med_r, px / med_l) / taper
    along = (py - (lm["spine_y"] - 80.0 * s)) / (75.0 * s)
    mediastinum = (across**2 + along**2 < 1.0) & (py < lm["spine_y"] - 10.0)
    spine_zone = ((px / (28.0 * s)) ** 2 + ((py - lm["spine_y"]) / (30.0 * s)) ** 2 < 1.0) | (
        (np.abs(px) < 14.0 * s) & (py > lm["spine_y"])
    )
    lung &= ~(mediastinum | spine_zone)
    mu[lung] = MU["lung"]

    below = (zz >= dome) & (rb < 1.0)
    liver = below & (px < 40.0 * s)
    mu[liver] = MU["liver"]

    painter = Painter(grid, mu, float(rot))
    # Heart (apex to the left and down), pulmonary arteries at the hila, aorta, SVC, trachea, bronchi.
    hz = lm["dome_l"] - 36.0 * s
    lm["heart_z"] = hz
    hc = (lm["heart_x"], lm["heart_y"], hz)
    sl, occ = painter.ellipsoid(hc, heart_radii(lm, patient.heart_scale), tilt_deg=HEART_TILT_DEG)
    painter.paint(sl, occ, MU["blood"])
    heart = np.zeros(grid.shape, dtype=bool)
    heart[sl] = occ > 0.5
    knob_z = lm["carina"] - 35.0 * s
    for center, radii in (
        ((28.0 * s, 8.0 * s, knob_z), (17.0 * s, 30.0 * s, 16.0 * s)),  # aortic knob
        ((-62.0 * s, 4.0 * s, lm["carina"] + 30.0 * s), (17.0 * s, 20.0 * s, 32.0 * s)),  # right hilum
        ((58.0 * s, 10.0 * s, lm["carina"] + 18.0 * s), (16.0 * s, 20.0 * s, 30.0 * s)),  # left hilum
        ((-24.0 * s, -12.0 * s, lm["carina"] - 20.0 * s), (16.0 * s, 34.0 * s, 60.0 * s)),  # SVC / ascending
    ):
        sl, occ = painter.ellipsoid(center, radii)
        painter.paint(sl, occ, MU["blood"])
    sl, occ = painter.capsule(
        (24.0 * s, 40.0 * s, knob_z), (20.0 * s, 45.0 * s, lm["dome_l"] + 20.0), 12.0 * s
    )
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

    if patient.sex == "F":
        bz = lm["dome_r"] - 20.0 * s
        for sign in (-1.0, 1.0):
            # Never quite symmetric, and thinning towards the edge: a soft, doubled lateral contour.
            dy, dz, size = rng.normal(0.0, 5.0), rng.normal(0.0, 7.0), rng.uniform(0.85, 1.1) * s
            for grow, value in ((1.0, 0.6 * MU["fat"]), (0.8, MU["fat"])):
                sl, occ = painter.ellipsoid(
                    (sign * 84.0 * s, -lm["cage_b"] - wall + 24.0 * s + dy, bz + dz),
                    (38.0 * size * grow, 28.0 * size * grow, 48.0 * size * grow),
                )
                painter.paint_max(sl, occ, value)

    # Paraspinal muscles: a soft ridge down the back, so the lateral is denser behind than in front.
    back = 36.0 * s + 0.6 * patient.soft_tissue_mm
    top_z = lm["cage_top"] + 50.0 * s
    sl, occ = painter.ellipsoid(
        (0.0, lm["spine_y"] + 30.0 * s + back * 0.5, (top_z + grid.height_mm) / 2 + 60.0),
        (40.0 * s, back, (grid.height_mm - top_z) / 2 + 60.0),
    )
    painter.paint_max(sl, occ * ~cavity[sl], MU["soft"])
    _paint_skeleton(painter, patient, lm, rng)
    ribs = _rib_samples(lm, float(rot), rng)
    return Anatomy(patient, grid, mu, lung & (mu == MU["lung"]), heart, cavity, px, py, lm, ribs)


def _paint_skeleton(
    painter: Painter, patient: Patient, lm: dict[str, float], rng: np.random.Generator
) -> None:
    s = patient.scale
    sy = lm["spine_y"]
    # Vertebral bodies with discs, pedicles and spinous processes, from the neck to the bottom of the field.
    period = 27.0 * s
    z0 = float(rng.uniform(0.0, period))
    zc = z0
    while zc < painter.grid.height_mm + period:
        h = 10.0 * s * (1.0 + 0.3 * zc / painter.grid.height_mm)
        for center, radii, value in (
            ((0.0, sy, zc), (18.0 * s + h * 0.3, 15.0 * s, h), MU["trabecular"] + 0.002),
            ((-15.0 * s, sy + 20.0 * s, zc), (5.0 * s, 9.0 * s, h * 0.8), MU["trabecular"] - 0.003),
            ((15.0 * s, sy + 20.0 * s, zc), (5.0 * s, 9.0 * s, h * 0.8), MU["trabecular"] - 0.003),
            ((0.0, sy + 42.0 * s, zc + 6.0 * s), (4.0 * s, 14.0 * s, h * 0.9), MU["trabecular"] - 0.003),
        ):
            sl, occ = painter.ellipsoid(center, radii)
            painter.paint_max(sl, occ, value)
        zc += period
    # The shoulder girdle (clavicles, scapulae, humeri) depends on the arms' pose, which differs between
    # the views; the renderer draws it per view (``sample_data.phantom._girdle``).
    front = -lm["cage_b"] + lm["cage_yc"] - 6.0 * s
    sl, occ = painter.ellipsoid(
        (0.0, front - 2.0 * s, lm["cage_top"] + 125.0 * s), (14.0 * s, 6.0 * s, 95.0 * s)
    )
    painter.paint_max(sl, occ, MU["trabecular"])


_RIB_STEP_MM = 2.5  # sampling step over the rib cage surface (independent of the voxel size)


def _rib_samples(lm: dict[str, float], rot: float, rng: np.random.Generator) -> np.ndarray:
    """Twelve rib pairs hugging the cage: high at the spine, dropping steeply towards the front.

    The cage wall is sampled directly (height x angle x depth into the wall) rather than voxelised, so
    the ribs stay sharp however coarse the volume is. Each rib gets its own small offset and thickness
    so the cage is not a regular grating. Returns ``[n, 4]``: grid x, grid y, z (mm) and the line
    integral each sample adds (attenuation above soft tissue times its volume, mm^3 / mm^2 = mm).
    """
    step = _RIB_STEP_MM
    z = np.arange(lm["cage_top"] - 20.0, lm["cage_top"] + 13.0 * lm["rib_spacing"] + 120.0, step)
    a, b = _cage_axes(z.astype(np.float32), lm)
    n_phi = int(np.ceil(0.85 * np.pi * lm["cage_a"] / step))
    phi = (np.arange(n_phi, dtype=np.float32) + 0.5) * (0.85 * np.pi / n_phi)  # 0 at the spine
    depth = np.arange(0.75, 9.0, 1.5, dtype=np.float32)  # into the wall, mm
    zz = z.astype(np.float32)[:, None, None]
    aa, bb = a[:, None, None], b[:, None, None]
    sp, cp = np.sin(phi)[None, :, None], np.cos(phi)[None, :, None]
    t = depth[None, None, :]
    ax = (aa + t) * sp  # |patient x|
    ay = (bb + t) * cp  # patient y - cage centre
    ds = np.sqrt((aa * cp) ** 2 + (bb * sp) ** 2) * (0.85 * np.pi / n_phi)  # arc length per sample
    u = np.arctan2(ax, ay) / np.pi  # 0 at the spine, 1 at the sternum
    drop = (
        -18.0 * np.sin(2.0 * np.pi * np.minimum(u, 0.5))
        + 18.0 * np.sin(2.0 * np.pi * np.clip(u - 0.5, 0.0, 0.25))
        + 110.0 * u**2.5
    )
    jitter = rng.normal(0.0, 0.12, size=(2, 2, 14)).astype(np.float32)
    out = []
    for side, sign in enumerate((-1.0, 1.0)):
        kf = (zz - drop - lm["cage_top"] + 6.0) / lm["rib_spacing"]
        idx = np.clip(np.round(kf), 0, 13).astype(np.int64)
        kf = kf - jitter[side, 0, idx] * (0.3 + u)
        kr = np.round(kf)
        along = np.abs(kf - kr) * lm["rib_spacing"]
        height = (4.2 + 2.2 * u) * (1.0 + jitter[side, 1, np.clip(kr, 0, 13).astype(np.int64)])
        u_end = np.clip(0.80 - 0.05 * np.clip(kr - 6, 0, None), 0.35, 0.8)
        # Round cross-section: full height mid-wall, thinner towards the inner and outer cortex.
        across = (t - 4.5) / 4.5
        occ = np.clip((1.0 - (along / height) ** 4 - across**4) * 3.0, 0.0, 1.0)
        occ *= 0.6 + 0.4 * (along / height) ** 4  # the cortex, seen edge-on, outlines each rib
        occ *= 1.0 - 0.45 * np.clip((u - 0.5) / 0.3, 0.0, 1.0)  # anterior ribs are thinner, fainter
        occ *= (kr >= 0) & (kr < 12) & (u > 0.06) & (u < u_end)
        occ *= np.clip((u_end - u) * 40.0, 0.0, 1.0)
        keep = occ > 0
        px = sign * np.broadcast_to(ax, occ.shape)[keep]
        py = np.broadcast_to(ay, occ.shape)[keep] + lm["cage_yc"]
        pz = np.broadcast_to(zz, occ.shape)[keep]
        w = (MU["rib"] - MU["soft"]) * occ[keep] * np.broadcast_to(ds, occ.shape)[keep] * step * 1.5
        gx = px * np.cos(rot) - py * np.sin(rot)
        gy = px * np.sin(rot) + py * np.cos(rot)
        out.append(np.stack([gx, gy, pz, w], axis=1))
    return np.concatenate(out).astype(np.float32)
