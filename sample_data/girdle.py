"""Shoulders and arms, posed per exposure: bones (clavicles, scapulae, humeri) and their soft tissue.

The pose differs between films of one study, so the girdle lives outside the shared volume and is drawn
on each view's canvas from 3D primitives projected through that view's beam:

- ``PA``: shoulders rolled forward, hands on the hips: scapulae pulled off the lungs, arms out.
- ``AP``: arms by the sides (bedside, supine): scapulae over the upper lungs, clavicles projected higher.
- ``up``: lateral with both arms raised forward over the head: arm soft tissue and humeri cross the
  upper anterior field.
- ``down``: lateral with the arms hanging: humeri and arm soft tissue over the mid chest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sample_data.anatomy import MU, _cage_axes
from sample_data.projection import Canvas

__all__ = ["POSES", "Pose", "draw_girdle_bones", "draw_girdle_soft"]

POSES = ("PA", "AP", "up", "down")
_TRABECULAR = MU["trabecular"] - MU["soft"]
_CORTICAL = MU["cortical"] - MU["soft"]


@dataclass(frozen=True)
class Pose:
    """How the shoulders and arms are held for one film."""

    name: str = "PA"  # one of POSES
    arm_angle_deg: float = 140.0  # "up": elevation from hanging (90 = forward, 180 = straight up)


def _joints(lm: dict[str, float], pose: Pose) -> dict[str, np.ndarray]:
    """Patient positions of the girdle's landmarks, per side (index 0 right, 1 left)."""
    s, top, a = lm["scale"], lm["cage_top"], lm["cage_a"]
    sign = np.array([-1.0, 1.0])
    back = {"PA": -6.0, "AP": 14.0, "up": 8.0, "down": 6.0}[pose.name] * s
    shoulder = np.stack([sign * (a + 26.0 * s), np.full(2, back), np.full(2, top + 38.0 * s)], axis=1)
    length = 290.0 * s
    if pose.name == "PA":  # hands on the hips: elbows out and back
        elbow = shoulder + np.stack(
            [sign * 95.0 * s, np.full(2, 30.0 * s), np.full(2, 0.92 * length)], axis=1
        )
    elif pose.name == "AP":  # by the sides
        elbow = shoulder + np.stack([sign * 34.0 * s, np.full(2, 12.0 * s), np.full(2, length)], axis=1)
    elif pose.name == "up":
        e = np.deg2rad(pose.arm_angle_deg)
        elbow = shoulder + np.stack(
            [-sign * 30.0 * s, np.full(2, -np.sin(e) * length), np.full(2, np.cos(e) * length)], axis=1
        )
    else:
        elbow = shoulder + np.stack([sign * 22.0 * s, np.full(2, 18.0 * s), np.full(2, length)], axis=1)
    return {"shoulder": shoulder, "elbow": elbow, "sign": sign}


def draw_girdle_bones(canvas: Canvas, lm: dict[str, float], pose: Pose) -> None:
    """Clavicles, scapulae and humeri (line integrals above soft tissue) for ``pose``."""
    s, top = lm["scale"], lm["cage_top"]
    j = _joints(lm, pose)
    lift = -14.0 * s if pose.name == "AP" else 0.0  # lordotic projection of a bedside AP
    medial_x = {"PA": 104.0, "AP": 64.0, "up": 80.0, "down": 72.0}[pose.name] * s
    zs = np.array([top + 32.0 * s, top + 100.0 * s], np.float32)
    _, b, yc = _cage_axes(zs, lm)
    front = float(yc[0] - b[0]) - 0.5 * lm["wall"]
    back = float(yc[1] + b[1] * 0.85) + 10.0 * s
    for k, sign in enumerate(j["sign"]):
        head = j["shoulder"][k] + np.array([sign * 6.0 * s, 0.0, 0.0])
        acromion = (sign * (lm["cage_a"] + 18.0 * s), 0.6 * head[1], top + 10.0 * s + lift)
        clavicle = (
            (sign * 18.0 * s, front + 6.0 * s, top + 32.0 * s + lift),
            (sign * 72.0 * s, front + 20.0 * s, top + 24.0 * s + lift),
            acromion,
        )
        canvas.tube(
            clavicle[0], clavicle[1], 6.5 * s, 1.3 * _TRABECULAR, cortex=1.8, mu_cortex=1.3 * _CORTICAL
        )
        canvas.tube(
            clavicle[1], clavicle[2], 5.8 * s, 1.3 * _TRABECULAR, cortex=1.6, mu_cortex=1.3 * _CORTICAL
        )
        # Scapula: a thin plate behind the upper ribs with a thick lateral border and a spine to the acromion.
        sup = (sign * medial_x, back, top + 22.0 * s)
        inf = (sign * (medial_x + 18.0 * s), back - 6.0 * s, top + 165.0 * s)
        glenoid = (sign * (lm["cage_a"] + 12.0 * s), head[1] + 4.0 * s, top + 46.0 * s)
        canvas.plate(sup, inf, glenoid, 2.5 * s, _TRABECULAR)
        canvas.tube(sup, inf, 3.0 * s, _TRABECULAR, cortex=1.2, mu_cortex=_CORTICAL)
        canvas.tube(inf, glenoid, 5.0 * s, _TRABECULAR, cortex=1.6, mu_cortex=_CORTICAL)
        canvas.tube((sign * medial_x, back + 4.0 * s, top + 50.0 * s), acromion, 3.5 * s, _TRABECULAR)
        canvas.ellipsoid(
            tuple(head), (24.0 * s, 24.0 * s, 24.0 * s), _TRABECULAR, cortex=1.0, mu_cortex=0.3 * _CORTICAL
        )
        canvas.tube(tuple(head), tuple(j["elbow"][k]), 10.5 * s, _TRABECULAR, cortex=3.0, mu_cortex=_CORTICAL)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def draw_girdle_soft(canvas: Canvas, lm: dict[str, float], pose: Pose) -> None:
    """Soft tissue outside the volume: the shoulders over the apices, and the upper arms."""
    s, wall = lm["scale"], lm["wall"]
    soft = MU["soft"]
    j = _joints(lm, pose)
    arm = 34.0 * s + 0.5 * wall
    if canvas.beam.view == "frontal":
        _frontal_shoulders(canvas, lm)
    else:
        _lateral_shoulders(canvas, lm, pose)
    for k, sign in enumerate(j["sign"]):
        shoulder = j["shoulder"][k]
        if canvas.beam.view == "frontal":  # on the lateral the shoulders are part of the band above
            canvas.ellipsoid(
                tuple(shoulder + np.array([sign * 8.0 * s, 0.0, 6.0 * s])),
                (36.0 * s + 0.4 * wall, 50.0 * s + 0.4 * wall, 56.0 * s),
                soft,
                fuzz=1.2,
            )
        # The arm's soft tissue begins beyond the joint; the shoulder itself is drawn above.
        root = shoulder + 0.25 * (j["elbow"][k] - shoulder)
        # Hanging beside a lateral's chest the arms flatten against it: thinner along the beam.
        flat = 0.7 if pose.name == "down" else 1.0
        canvas.tube(tuple(root), tuple(j["elbow"][k]), arm, flat * soft, fuzz=0.8)
        if pose.name == "down":  # the forearm hangs on into the abdomen's field
            hand = j["elbow"][k] + np.array([0.0, -40.0 * s, 260.0 * s])
            canvas.tube(tuple(j["elbow"][k]), tuple(hand), 0.8 * arm, flat * soft, fuzz=0.8)


def _frontal_shoulders(canvas: Canvas, lm: dict[str, float]) -> None:
    """Trapezius sloping from the neck to the acromion, thinning lower down and sooner at the sides."""
    s, top = lm["scale"], lm["cage_top"]
    mid, _, m = canvas.beam.project(0.0, 40.0 * s, top)
    mid, m = float(mid), float(m)

    def draw(U, Z):
        ax = np.abs(U - mid) / m
        ridge = top - 44.0 * s + 70.0 * s * np.clip((ax - 40.0 * s) / (140.0 * s), 0.0, 1.0) ** 1.3
        below = _smoothstep((Z - ridge) / (14.0 * s))
        low = top + 25.0 * s - 30.0 * s * np.clip((ax - 120.0 * s) / (60.0 * s), 0.0, 1.0)
        chest = _smoothstep((ax - 30.0 * s) / (45.0 * s)) * (1.0 - _smoothstep((Z - low) / (60.0 * s)))
        return MU["soft"] * 70.0 * s * below * chest

    b = canvas.beam
    canvas.add((b.across0_mm, b.across0_mm + b.across_mm, 0.0, top + 120.0 * s), draw)


def _lateral_shoulders(canvas: Canvas, lm: dict[str, float], pose: Pose) -> None:
    """Both shoulders and the trapezius overlap on a lateral: dense across the whole depth of the upper
    chest, fading smoothly over the apices (lower and longer with the arms down)."""
    s, top, wall = lm["scale"], lm["cage_top"], lm["wall"]
    zs = np.array([top + 20.0 * s], np.float32)
    _, b, yc = _cage_axes(zs, lm)
    front = float(yc[0] - b[0]) - wall
    back = float(yc[0] + b[0]) + lm["wall_back"]
    (u0, u1), (zt, _), (m, _) = canvas.beam.project([0.0, 0.0], [front, back], [top, top])
    low = (10.0 if pose.name == "up" else 40.0) * s
    thick = MU["soft"] * (100.0 * s + 1.5 * wall)

    def draw(U, Z):
        across = _smoothstep((U - u0) / (40.0 * s * m)) * _smoothstep((u1 - U) / (30.0 * s * m))
        down = 1.0 - _smoothstep((Z - zt - low * m) / (75.0 * s * m))
        return thick * across * down

    canvas.add((u0 - 5.0, u1 + 5.0, canvas.beam.top_mm, zt + (low + 80.0 * s) * m), draw)
