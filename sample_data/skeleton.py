"""The axial skeleton drawn per view: ribs as point samples, vertebrae and sternum as analytic shapes.

Bones are kept out of the coarse volume so every view projects them sharply through its own beam:
rotation, magnification and scoliosis then move them consistently in both views. Values are line
integrals of attenuation above the soft tissue the bone replaces.
"""

from __future__ import annotations

import math

import numpy as np

from sample_data.anatomy import MU, _cage_axes, spine_center
from sample_data.projection import Canvas

__all__ = ["draw_spine", "draw_sternum", "rib_samples", "vertebrae"]

_RIB_STEP_MM = 2.5  # sampling step over the rib cage surface (independent of the voxel size)
_TRABECULAR = MU["trabecular"] - MU["soft"]
_CORTICAL = MU["cortical"] - MU["soft"]


def rib_samples(lm: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Twelve rib pairs hugging the cage: high at the spine, dropping steeply towards the front.

    The cage wall is sampled directly (height x angle x depth into the wall) rather than voxelised, so
    the ribs stay sharp however coarse the volume is. Each rib gets its own small offset and thickness
    so the cage is not a regular grating. Returns ``[n, 4]``: patient x, y, z (mm) and the line
    integral each sample adds (attenuation above soft tissue times its volume, mm^3 / mm^2 = mm).
    """
    step = _RIB_STEP_MM
    z = np.arange(lm["cage_top"] - 20.0, lm["cage_top"] + 13.0 * lm["rib_spacing"] + 120.0, step)
    a, b, yc = _cage_axes(z.astype(np.float32), lm)
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
        py = np.broadcast_to(ay + yc[:, None, None], occ.shape)[keep]
        pz = np.broadcast_to(zz, occ.shape)[keep]
        w = (MU["rib"] - MU["soft"]) * occ[keep] * np.broadcast_to(ds, occ.shape)[keep] * step * 1.5
        out.append(np.stack([px, py, pz, w], axis=1))
    return np.concatenate(out).astype(np.float32)


def vertebrae(lm: dict[str, float], height_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Vertebral bodies from the neck to the bottom of the field: ``[k, 8]`` centre x, y, z, half-width,
    half-depth, half-height and the spine's shift in x and y over the next 6 mm down (its lean)."""
    s = lm["scale"]
    period = 27.0 * s
    zc = float(rng.uniform(0.0, period)) - period
    rows = []
    while zc < height_mm + period:
        t = np.clip(zc / height_mm, 0.0, 1.0)
        grow = 0.8 if zc < lm["cage_top"] else 1.0  # cervical bodies are smaller
        p = period * (0.9 + 0.25 * t)
        x, y = spine_center(np.array([zc, zc + 5.0]), lm)
        rows.append(
            [
                float(x[0]),
                float(y[0]),
                zc,
                (17.0 + 7.0 * t) * s * grow,
                (14.0 + 4.0 * t) * s * grow,
                0.5 * p - 2.6 * s,
                float(x[1] - x[0]) * 6.0 / 5.0,
                float(y[1] - y[0]) * 6.0 / 5.0,
            ]
        )
        zc += p
    return np.asarray(rows, np.float32)


def draw_spine(canvas: Canvas, verts: np.ndarray, lm: dict[str, float], detail: bool = True) -> None:
    """Vertebral bodies with end plates and, with ``detail``, pedicles and spinous processes (the
    transverse processes hide under the rib heads and are left out).

    The posterior elements are thinner, more porous bone than they are drawn, so they get half weight.
    """
    s = lm["scale"]
    post, post_c = 0.5 * _TRABECULAR, 0.5 * _CORTICAL
    beam = canvas.beam
    lateral = beam.view == "lateral"
    # The frontal sees the end plates through the diverging beam at an angle: soft, not crisp lines.
    plates = 1.0 if lateral else 0.3
    for x, y, z, rx, ry, hh, dx, dy in verts.tolist():
        # Lean in the image plane: kyphosis shows on the lateral, scoliosis on the frontal.
        u0, z0, _ = beam.point(x, y, z)
        u1, z1, _ = beam.point(x + dx, y + dy, z + 6.0)
        canvas.column(
            (x, y, z), rx, ry, hh, math.atan2(u1 - u0, z1 - z0), _TRABECULAR, _CORTICAL, 1.4, plates
        )
        if not detail:
            continue
        back = y + ry
        for sign in (-1.0, 1.0):
            canvas.ellipsoid(
                (x + sign * 0.72 * rx, back + 6.0 * s, z - 0.15 * hh),
                (4.5 * s, 9.0 * s, 0.75 * hh),
                post,
                cortex=1.2,
                mu_cortex=post_c,
            )
        canvas.tube(
            (x, back + 16.0 * s, z),
            (x, back + (40.0 if lateral else 36.0) * s, z + 20.0 * s),
            3.8 * s,
            post,
            cortex=1.2,
            mu_cortex=post_c,
        )


def draw_sternum(canvas: Canvas, lm: dict[str, float]) -> None:
    """Manubrium and sternal body just inside the anterior chest wall, the lower end further forward."""
    s = lm["scale"]
    top = lm["cage_top"]
    for z0, z1, half_width in (
        (top + 34.0 * s, top + 80.0 * s, 26.0 * s),
        (top + 86.0 * s, top + 190.0 * s, 16.0 * s),
    ):
        _, b, yc = _cage_axes(np.array([z0, z1], np.float32), lm)
        ys = [float(c - bb - 4.0 * s) for c, bb in zip(yc, b, strict=True)]
        u0, v0, _ = canvas.beam.point(0.0, ys[0], z0)
        u1, v1, _ = canvas.beam.point(0.0, ys[1], z1)
        tilt = math.atan2(u1 - u0, v1 - v0)
        centre = (0.0, (ys[0] + ys[1]) / 2, (z0 + z1) / 2)
        length = math.hypot(ys[1] - ys[0], z1 - z0) / 2
        canvas.column(centre, half_width, 6.0 * s, length, tilt, 0.7 * _TRABECULAR, 0.3 * _CORTICAL, 1.0)
