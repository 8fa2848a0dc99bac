"""Hardware on and in the patient: ECG electrodes and leads, a pacemaker, an endotracheal tube, a
nasogastric tube and a central venous line.

Each device is a cloud of 3D point samples (patient x, y, z and the line integral each adds), so
every view projects it through its own beam and the devices agree between the frontal and the lateral.
Wires are sampled every ``_STEP_MM`` along their length and splatted at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sample_data.anatomy import Anatomy, _cage_axes, body_extent
from sample_data.projection import Beam, splat

__all__ = ["Kit", "build", "draw"]

_STEP_MM = 0.3
# Attenuation per mm at ~60 keV, above the soft tissue or air a device displaces.
_METAL = 0.16  # steel snaps, lead coils
_TITANIUM = 0.12  # pacemaker can
_COPPER = 0.3  # lead wire cores
_STRIPE = 0.15  # barium stripe of plastic tubes and catheters


@dataclass
class Kit:
    """The devices one patient carries, as point samples ``[n, 4]`` (x, y, z mm, mm^3 x attenuation)."""

    names: tuple[str, ...] = ()
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def build(anatomy: Anatomy, devices: tuple[str, ...], rng: np.random.Generator) -> Kit:
    """Place ``devices`` (names from ``sample_data.variants.DEVICES``) on this patient."""
    makers = {
        "ecg": _ecg,
        "pacemaker": _pacemaker,
        "ett": _endotracheal,
        "ngt": _nasogastric,
        "central_line": _central_line,
    }
    parts = [makers[name](anatomy.landmarks, rng) for name in devices]
    points = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 4), np.float32)
    return Kit(tuple(devices), points)


def draw(kit: Kit, beam: Beam, shape: tuple[int, int]) -> np.ndarray:
    """The devices' line integrals on an image of ``shape`` over the beam's field."""
    if len(kit.points) == 0:
        return np.zeros(shape, np.float32)
    return splat(beam, kit.points, shape)


def _wire(path: np.ndarray, area_mu: float) -> np.ndarray:
    """Samples every ``_STEP_MM`` along a polyline ``[k, 3]``, each carrying ``area_mu`` per mm of length."""
    seg = np.diff(path, axis=0)
    length = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(length)])
    t = np.arange(0.0, cum[-1], _STEP_MM)
    pts = np.stack([np.interp(t, cum, path[:, k]) for k in range(3)], axis=1)
    return np.concatenate([pts, np.full((len(t), 1), area_mu * _STEP_MM)], axis=1)


def _smooth_path(rng: np.random.Generator, start, heading, length: float, bend: float) -> np.ndarray:
    """A smoothly wandering 2D path (x, z) from ``start``: heading changes by a sum of slow waves."""
    n = max(int(length / 4.0), 2)
    s = np.linspace(0.0, 1.0, n)
    turn = sum(rng.normal(0.0, bend) * np.sin(np.pi * (k + 1) * s + rng.uniform(0, np.pi)) for k in range(3))
    angle = heading + turn
    steps = np.stack([np.sin(angle), np.cos(angle)], axis=1) * (length / n)
    return np.asarray(start, np.float64) + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, axis=0)[:-1]])


def _skin_front(lm: dict[str, float], x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Patient y of the anterior skin at (x, z), and a little in front of the body beyond its sides."""
    half, front, back = body_extent(np.asarray(z, np.float32), lm)
    p = lm["outline_p"]
    frac = np.clip(np.abs(x) / half, 0.0, 0.999) ** p
    depth = (back - front) / 2
    return (front + back) / 2 - depth * (1.0 - frac) ** (1.0 / p) - 2.0


def _disc(center, radius: float, ring: float, mu_t: float, normal_y: bool = True) -> np.ndarray:
    """A flat disc (or a ring of width ``ring``) facing forwards, sampled every 0.4 mm."""
    step = 0.4
    g = np.arange(-radius, radius + step, step)
    dx, dz = np.meshgrid(g, g)
    r = np.hypot(dx, dz)
    keep = (r <= radius) & ((r >= radius - ring) if ring > 0 else True)
    n = int(keep.sum())
    pts = np.stack([center[0] + dx[keep], np.full(n, center[1]), center[2] + dz[keep]], axis=1)
    return np.concatenate([pts, np.full((n, 1), mu_t * step * step)], axis=1)


def _ecg(lm: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Three to five electrodes (a metal ring and snap on a faint pad) and their leads trailing off."""
    s, top, a = lm["scale"], lm["cage_top"], lm["cage_a"]
    sites = [
        (-0.65 * a, top + 30.0 * s),
        (0.65 * a, top + 30.0 * s),
        (0.7 * a, lm["dome_l"] + 30.0 * s),
        (-0.7 * a, lm["dome_r"] + 40.0 * s),
        (0.25 * a, lm["dome_l"] - 30.0 * s),
    ]
    n = int(rng.integers(3, 6))
    out = []
    for x0, z0 in sites[:n]:
        x = x0 + rng.normal(0.0, 15.0)
        z = z0 + rng.normal(0.0, 15.0)
        y = float(_skin_front(lm, np.array([x]), np.array([z]))[0])
        r = rng.uniform(3.5, 5.5)
        out.append(_disc((x, y - 1.0, z), r, 1.0, 0.25))
        out.append(_disc((x, y - 1.5, z), 1.6, 0.0, 0.3))
        out.append(_disc((x, y, z), 11.0, 0.0, 0.015))
        heading = np.arctan2(np.sign(x) * rng.uniform(0.2, 1.0), rng.uniform(-0.4, 1.0))
        xz = _smooth_path(rng, (x, z), heading, rng.uniform(250.0, 500.0), 0.6)
        ys = _skin_front(lm, xz[:, 0], xz[:, 1]) - rng.uniform(2.0, 15.0)
        out.append(_wire(np.stack([xz[:, 0], ys, xz[:, 1]], axis=1), _COPPER * np.pi * 0.45**2))
    return np.concatenate(out)


def _pacemaker(lm: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A titanium can under the clavicle (left four times in five) with one to three leads to the heart."""
    s, top = lm["scale"], lm["cage_top"]
    side = 1.0 if rng.random() < 0.8 else -1.0
    cx, cz = side * rng.uniform(0.45, 0.65) * lm["cage_a"], top + rng.uniform(45.0, 75.0) * s
    cy = float(_skin_front(lm, np.array([cx]), np.array([cz]))[0]) + 8.0 + 0.3 * lm["wall"]
    w, h, t, step = rng.uniform(21.0, 26.0), rng.uniform(19.0, 24.0), 7.0, 0.5
    g = np.arange(-1.0, 1.0, step / w)
    dx, dz = np.meshgrid(g * w, np.arange(-1.0, 1.0, step / h) * h)
    keep = np.abs(dx / w) ** 4 + np.abs(dz / h) ** 4 < 1.0
    tilt = rng.uniform(-0.5, 0.5)
    px, pz = (
        dx[keep] * np.cos(tilt) - dz[keep] * np.sin(tilt),
        dx[keep] * np.sin(tilt) + dz[keep] * np.cos(tilt),
    )
    layers = []
    for dy in (-t / 3, 0.0, t / 3):
        n = px.size
        layers.append(
            np.stack([cx + px, np.full(n, cy + dy), cz + pz, np.full(n, _TITANIUM * step * step * t / 3)], 1)
        )
    can = np.concatenate(layers)
    header = _disc((cx - side * 0.2 * w, cy, cz - h - 4.0), 6.0, 0.0, 0.35)
    entry = np.array([cx - side * 0.3 * w, cy, cz - h - 6.0])
    out = [can, header]
    heart = (lm["heart_x"], lm["heart_y"], lm["heart_z"])
    vein = np.array([side * 55.0 * s, cy + 22.0, top + 28.0 * s])
    svc = np.array([-22.0 * s, -10.0 * s, lm["carina"] + 10.0 * s])
    atrium = np.array([-32.0 * s, heart[1] + 10.0 * s, heart[2] - 20.0 * s])
    targets = [
        np.array([heart[0] + 35.0 * s, heart[1] - 25.0 * s, heart[2] + 30.0 * s]),  # right ventricular apex
        np.array([-12.0 * s, heart[1] - 30.0 * s, heart[2] - 55.0 * s]),  # right atrial appendage
        np.array([heart[0] + 55.0 * s, heart[1] + 30.0 * s, heart[2] - 5.0 * s]),  # coronary sinus branch
    ]
    for target in targets[: int(rng.choice([1, 2, 2, 3]))]:
        loop = entry + np.array([side * 12.0, -2.0, 18.0])
        path = np.stack([entry, loop, vein, svc, atrium, target]) + rng.normal(0.0, 3.0, (6, 3))
        path = _spline(path, 120)
        out.append(_wire(path, _COPPER * np.pi * 0.6**2))
        out.append(_wire(path[-8:], _METAL * np.pi * 1.2**2))  # the coiled tip
    return np.concatenate(out)


def _spline(points: np.ndarray, n: int) -> np.ndarray:
    """A smooth curve through ``points`` (Catmull-Rom), ``n`` samples per span."""
    p = np.concatenate([points[:1], points, points[-1:]])
    t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    spans = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        spans.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    return np.concatenate(spans + [points[-1:]])


def _tube(path: np.ndarray, radius: float, stripe: float) -> np.ndarray:
    """A plastic tube: two faint walls seen edge-on and a radiopaque stripe along one side."""
    walls = [_wire(path + np.array([sign * radius, 0.0, 0.0]), 0.012 * radius) for sign in (-1.0, 1.0)]
    return np.concatenate([*walls, _wire(path + np.array([0.6 * radius, 0.0, 0.0]), stripe)])


def _endotracheal(lm: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """An endotracheal tube down the trachea, its tip 3-7 cm above the carina."""
    s = lm["scale"]
    tip = lm["carina"] - rng.uniform(30.0, 70.0) * s
    path = np.array(
        [[0.0, -60.0 * s, -50.0], [-1.0, -5.0 * s, 5.0], [-2.0, 14.0 * s, 45.0 * s], [-2.0, 18.0 * s, tip]]
    )
    return _tube(_spline(path, 40), 5.0, _STRIPE * 1.2)


def _nasogastric(lm: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A nasogastric tube down the oesophagus behind the trachea, through the hiatus into the stomach."""
    s = lm["scale"]
    stomach = np.array([60.0 * s, -5.0 * s, lm["dome_l"] + 40.0 * s])
    path = np.array(
        [
            [6.0, -40.0 * s, -60.0],
            [4.0, 34.0 * s, 30.0 * s],
            [6.0, 36.0 * s, lm["carina"]],
            [14.0 * s, 28.0 * s, lm["dome_l"] - 10.0 * s],
            [30.0 * s, 10.0 * s, lm["dome_l"] + 20.0 * s],
            stomach,
            stomach + np.array([rng.uniform(-15.0, 25.0), 5.0, rng.uniform(5.0, 30.0)]),
        ]
    )
    return _tube(_spline(path, 40), 2.5, _STRIPE)


def _central_line(lm: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A central venous catheter from the right internal jugular or the left subclavian vein into the SVC."""
    s, top = lm["scale"], lm["cage_top"]
    tip = np.array([-20.0 * s, -12.0 * s, lm["carina"] + rng.uniform(10.0, 45.0) * s])
    if rng.random() < 0.6:
        path = np.array(
            [
                [-70.0 * s, -30.0 * s, -40.0],
                [-40.0 * s, 0.0, top + 10.0 * s],
                [-28.0 * s, -6.0, top + 45.0 * s],
                tip,
            ]
        )
    else:
        _, b, yc = _cage_axes(np.array([top + 60.0 * s], np.float32), lm)
        entry = np.array([115.0 * s, float(yc[0] - b[0]) - 10.0, top + 45.0 * s])
        path = np.array(
            [
                entry + [40.0, -20.0, 20.0],
                entry,
                [40.0 * s, -20.0 * s, top + 30.0 * s],
                [-12.0 * s, -14.0 * s, top + 50.0 * s],
                tip,
            ]
        )
    return _wire(_spline(path, 40), _STRIPE * 1.6 * np.pi)
