"""Projection geometry of one view: a point source, a flat detector, and the patient's pose between them.

Patient coordinates are millimetres (x right -> left, y anterior -> posterior, z down from the top of the
field). A ``Beam`` turns the patient by its rotation about the vertical axis, sends rays along ``s``
towards the detector and maps a point to the detector's across axis ``u`` and height, magnified by
its distance from the source relative to the grid centre (so the centre plane keeps its size). The
same mapping serves the coarse volume (``project_volume``, slab by slab), point samples (ribs,
vessels, devices: ``splat``) and analytic 2D shapes drawn on a ``Canvas``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

__all__ = ["Beam", "Canvas", "project_volume", "splat"]


@dataclass(frozen=True)
class Beam:
    """One view's geometry and the field of the detector it fills."""

    view: str  # "frontal" or "lateral"
    projection: str = "PA"  # frontal only: "PA" (detector in front) or "AP" (detector behind)
    rotation_deg: float = 0.0  # patient turned about the vertical axis for this exposure
    sid_mm: float = 1800.0  # source to detector
    detector_mm: float = 130.0  # detector plane from the grid centre, along the beam
    zc_mm: float = 195.0  # height of the central ray
    across0_mm: float = -195.0  # the field's first column, on the across axis (frontal: x, lateral: y)
    across_mm: float = 390.0  # field width
    height_mm: float = 390.0  # field height
    top_mm: float = 0.0  # patient z of the field's top edge

    @property
    def theta(self) -> float:
        return float(np.deg2rad(self.rotation_deg))

    def to_beam(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Across coordinate ``u`` and depth ``s`` along the beam (positive towards the detector)."""
        c, sn = np.cos(self.theta), np.sin(self.theta)
        xr, yr = x * c - y * sn, x * sn + y * c
        if self.view == "lateral":  # left side against the detector, anterior at low u
            return yr, xr
        return xr, (yr if self.projection == "AP" else -yr)

    def magnification(self, s: np.ndarray | float) -> np.ndarray | float:
        """Magnification relative to the grid centre of a point ``s`` mm along the beam."""
        base = self.sid_mm - self.detector_mm
        return base / (base + s)

    def project(self, x, y, z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detector position (across mm, height mm) and magnification of patient points."""
        u, s = self.to_beam(np.asarray(x, np.float32), np.asarray(y, np.float32))
        m = self.magnification(s)
        return u * m, self.zc_mm + (np.asarray(z, np.float32) - self.zc_mm) * m, m

    def point(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """``project`` for one point, in plain floats (the analytic shapes call it often)."""
        (ux, uy), (sx, sy) = self.axes
        m = (self.sid_mm - self.detector_mm) / (self.sid_mm - self.detector_mm + sx * x + sy * y)
        return (ux * x + uy * y) * m, self.zc_mm + (z - self.zc_mm) * m, m

    @cached_property
    def axes(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """Unit vectors (patient x, y) of the across axis and of the beam's direction."""
        c, sn = math.cos(self.theta), math.sin(self.theta)
        if self.view == "lateral":
            return (sn, c), (c, -sn)
        return (c, -sn), ((sn, c) if self.projection == "AP" else (-sn, -c))

    def shape(self, pixel_mm: float) -> tuple[int, int]:
        """Rows and columns of the field at ``pixel_mm``."""
        return max(1, round(self.height_mm / pixel_mm)), max(1, round(self.across_mm / pixel_mm))


def project_volume(
    volume: np.ndarray,
    voxel_mm: float,
    lo_mm: tuple[float, float],
    beam: Beam,
    shape: tuple[int, int],
    slab: int = 7,
) -> np.ndarray:
    """Line integrals (mm x attenuation) of a ``[z, y, x]`` volume on an image of ``shape`` over the field.

    The volume is summed in slabs across the beam; each slab is turned and magnified as its middle
    plane would be (a shear-warp approximation, exact to a voxel for slabs of ~20 mm). ``lo_mm`` is the
    patient (y, x) of the volume's first voxel edge.
    """
    rows, cols = shape
    ph, pw = beam.height_mm / rows, beam.across_mm / cols
    c, sn = np.cos(beam.theta), np.sin(beam.theta)
    axis = 2 if beam.view == "lateral" else 1
    n = volume.shape[axis]
    lo_along = lo_mm[1] if axis == 2 else lo_mm[0]  # the slab axis
    lo_across = lo_mm[0] if axis == 2 else lo_mm[1]  # what the slab's columns index
    out = np.zeros(shape, np.float32)
    for k0 in range(0, n, slab):
        k1 = min(n, k0 + slab)
        part = volume[:, :, k0:k1].sum(axis=2) if axis == 2 else volume[:, k0:k1, :].sum(axis=1)
        if not part.any():
            continue
        mid = lo_along + (k0 + k1) / 2 * voxel_mm
        if axis == 2:  # slab at patient x = mid: u = mid sin + y cos, s = mid cos
            m = beam.magnification(mid * c)
            shift = -mid * sn
        else:  # slab at patient y = mid: u = x cos - mid sin, s = -/+ mid cos
            m = beam.magnification(mid * c if beam.projection == "AP" else -mid * c)
            shift = mid * sn
        # Output pixel (r, q) -> input index: z = zc + (row_mm - zc) / m, across = (u / m + shift) / cos.
        az = ph / (voxel_mm * m)
        oz = ((beam.top_mm + 0.5 * ph - beam.zc_mm) / m + beam.zc_mm) / voxel_mm - 0.5
        ax = pw / (voxel_mm * m * c)
        ox = (((beam.across0_mm + 0.5 * pw) / m + shift) / c - lo_across) / voxel_mm - 0.5
        out += ndimage.affine_transform(
            part.astype(np.float32, copy=False),
            [az, ax],
            offset=[oz, ox],
            output_shape=shape,
            order=1,
            mode="nearest",  # the body goes on above and below the grid
        )
    out *= voxel_mm / c  # a tilted ray crosses each plane obliquely
    return out


def splat(beam: Beam, points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Line-integral image of point samples ``[n, 4]`` (patient x, y, z, mm^3 x attenuation).

    Each sample is spread bilinearly over the four nearest pixels and divided by the magnified pixel
    area, so a dense cloud of samples integrates to the right line integral.
    """
    rows, cols = shape
    if len(points) == 0:
        return np.zeros(shape, np.float32)
    u, z, m = beam.project(points[:, 0], points[:, 1], points[:, 2])
    pw, ph = beam.across_mm / cols, beam.height_mm / rows
    col = (u - beam.across0_mm) / pw - 0.5
    row = (z - beam.top_mm) / ph - 0.5
    return _bilinear(row, col, points[:, 3] / (m * m * pw * ph), shape)


def _bilinear(row: np.ndarray, col: np.ndarray, weight: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    r0, c0 = np.floor(row), np.floor(col)
    fr, fc = (row - r0).astype(np.float32), (col - c0).astype(np.float32)
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    index, weights = [], []
    for dr, wr in ((0, 1.0 - fr), (1, fr)):
        for dc, wc in ((0, 1.0 - fc), (1, fc)):
            r, c = r0 + dr, c0 + dc
            ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
            index.append((r * shape[1] + c)[ok])
            weights.append((weight * wr * wc)[ok])
    img = np.bincount(np.concatenate(index), np.concatenate(weights), shape[0] * shape[1])
    return img.reshape(shape).astype(np.float32)


class Canvas:
    """An image over a beam's field on which analytic shapes are drawn inside their bounding boxes."""

    def __init__(self, beam: Beam, shape: tuple[int, int]) -> None:
        self.beam = beam
        self.shape = shape
        self.img = np.zeros(shape, np.float32)
        self.pw = beam.across_mm / shape[1]
        self.ph = beam.height_mm / shape[0]

    def window(self, u0: float, u1: float, z0: float, z1: float):
        """Image slices covering across ``[u0, u1]`` and height ``[z0, z1]`` mm, and their coordinates."""
        b = self.beam
        rows, cols = self.shape
        c0 = min(max(math.floor((u0 - b.across0_mm) / self.pw), 0), cols)
        c1 = min(max(math.ceil((u1 - b.across0_mm) / self.pw) + 1, 0), cols)
        r0 = min(max(math.floor((z0 - b.top_mm) / self.ph), 0), rows)
        r1 = min(max(math.ceil((z1 - b.top_mm) / self.ph) + 1, 0), rows)
        if c1 <= c0 or r1 <= r0:
            return None
        U = (b.across0_mm + (np.arange(c0, c1, dtype=np.float32) + 0.5) * self.pw)[None, :]
        Z = (b.top_mm + (np.arange(r0, r1, dtype=np.float32) + 0.5) * self.ph)[:, None]
        return (slice(r0, r1), slice(c0, c1)), U, Z

    def add(self, reach: tuple[float, float, float, float], draw) -> None:
        """Add ``draw(U, Z)`` over the box ``(u0, u1, z0, z1)``."""
        got = self.window(*reach)
        if got is not None:
            sl, U, Z = got
            self.img[sl] += draw(U, Z)

    def tube(
        self, a, b, radius: float, mu: float, cortex: float = 0.0, mu_cortex: float = 0.0, fuzz: float = 0.5
    ) -> None:
        """A round bar between patient points ``a`` and ``b``; with ``cortex`` a bone's denser shell.

        ``mu`` (and ``mu_cortex``) are attenuations above the soft tissue the bar replaces; ``fuzz`` above
        0.5 softens the profile towards the rim (a limb's soft tissue rather than a rod).
        """
        ua, za, ma = self.beam.point(*a)
        ub, zb, mb = self.beam.point(*b)
        m = (ma + mb) / 2
        d = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
        _, e_s = self.beam.axes
        along = abs(d[0] * e_s[0] + d[1] * e_s[1]) / max(math.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2), 1e-6)
        slant = 1.0 / max(math.sqrt(max(1.0 - along**2, 0.0)), 0.3)  # a bar pointing at the source
        r = radius * m
        pa, pb = (ua, za), (ub, zb)
        reach = (min(pa[0], pb[0]) - r, max(pa[0], pb[0]) + r, min(pa[1], pb[1]) - r, max(pa[1], pb[1]) + r)
        if cortex <= 0.0:
            self.add(reach, lambda U, Z: (mu * slant / m) * _tube_chord(U, Z, pa, pb, r, fuzz))
            return
        inner = max(radius - cortex, 0.5) * m

        def draw(U, Z):
            outer, core = _tube_chord(U, Z, pa, pb, r), _tube_chord(U, Z, pa, pb, inner)
            return (slant / m) * (mu * core + mu_cortex * (outer - core))

        self.add(reach, draw)

    def ellipsoid(
        self, center, radii, mu: float, cortex: float = 0.0, mu_cortex: float = 0.0, fuzz: float = 0.5
    ) -> None:
        """An axis-aligned ellipsoid (patient radii x, y, z); with ``cortex`` a bone's shell.

        ``fuzz`` above 0.5 softens the profile towards the rim (a blob of soft tissue with no crisp edge).
        """
        uc, zc, m = self.beam.point(*center)
        e_u, _ = self.beam.axes

        def chord(rx, ry, rz):
            w = math.hypot(rx * e_u[0], ry * e_u[1])  # half-width across the image
            return w * m, rz * m, 2.0 * rx * ry / w  # and the chord through the centre

        w, h, c0 = chord(*radii)

        def draw(U, Z):
            t = 1.0 - ((U - uc) / w) ** 2 - ((Z - zc) / h) ** 2
            out = c0 * np.maximum(t, 0.0) ** fuzz
            if cortex <= 0.0:
                return mu * out
            wi, hi, ci = chord(*(max(r - cortex, 0.5) for r in radii))
            core = ci * np.sqrt(np.maximum(1.0 - ((U - uc) / wi) ** 2 - ((Z - zc) / hi) ** 2, 0.0))
            return mu * core + mu_cortex * (out - core)

        self.add((uc - w, uc + w, zc - h, zc + h), draw)

    def plate(self, p0, p1, p2, thickness: float, mu: float) -> None:
        """A flat triangular plate of ``thickness`` between three patient points (a scapula's blade)."""
        pts = np.asarray([p0, p1, p2], np.float64)
        u, z, m = self.beam.project(pts[:, 0], pts[:, 1], pts[:, 2])
        normal = np.cross(pts[1] - pts[0], pts[2] - pts[0])
        normal /= max(float(np.linalg.norm(normal)), 1e-6)
        _, e_s = self.beam.axes
        facing = abs(normal[0] * e_s[0] + normal[1] * e_s[1])
        chord = thickness / max(float(facing), 0.25)  # seen edge-on it is a line, capped here
        corners = list(zip(u.tolist(), z.tolist(), strict=True))
        edge = 1.5 * max(self.pw, self.ph)

        def draw(U, Z):
            inside = np.full(np.broadcast(U, Z).shape, np.inf, np.float32)
            area = (corners[1][0] - corners[0][0]) * (corners[2][1] - corners[0][1]) - (
                corners[2][0] - corners[0][0]
            ) * (corners[1][1] - corners[0][1])
            orient = 1.0 if area > 0 else -1.0
            for i in range(3):
                (ax, az), (bx, bz) = corners[i], corners[(i + 1) % 3]
                length = max(float(np.hypot(bx - ax, bz - az)), 1e-6)
                dist = orient * ((bx - ax) * (Z - az) - (bz - az) * (U - ax)) / length
                inside = np.minimum(inside, dist)
            return (mu * chord) * np.clip(inside / edge + 0.5, 0.0, 1.0)

        self.add((float(u.min()), float(u.max()), float(z.min()), float(z.max())), draw)

    def column(
        self, center, rx: float, ry: float, half_height: float, tilt: float, mu, mu_cortex, cortex, plates=1.0
    ):
        """An upright elliptic cylinder (a vertebral body, the sternum) with a cortical shell and end plates.

        ``tilt`` (radians) leans it in the image plane; its flat ends show as bright plates edge-on,
        weighted by ``plates`` (below 1 where end plates are seen obliquely and blur out).
        """
        uc, zc, m = self.beam.point(*center)
        e_u, _ = self.beam.axes
        ct, st = math.cos(tilt), math.sin(tilt)
        edge = 0.7 * min(self.pw, self.ph)

        def part(P, Q, rx_, ry_, hh):
            w = math.hypot(rx_ * e_u[0], ry_ * e_u[1])
            across = np.sqrt(np.maximum(1.0 - (P / (w * m)) ** 2, 0.0)) * (2.0 * rx_ * ry_ / w)
            return across * np.clip((hh * m - np.abs(Q)) / edge + 0.5, 0.0, 1.0)

        def draw(U, Z):
            du, dz = U - uc, Z - zc
            P, Q = du * ct - dz * st, du * st + dz * ct
            outer = part(P, Q, rx, ry, half_height)
            walls = part(P, Q, rx - cortex, ry - cortex, half_height)
            core = part(P, Q, rx - cortex, ry - cortex, half_height - cortex)
            return mu * core + mu_cortex * (outer - walls) + plates * mu_cortex * (walls - core)

        reach = (max(rx, ry) + half_height) * m
        self.add((uc - reach, uc + reach, zc - reach, zc + reach), draw)


def _tube_chord(U, Z, a, b, radius, fuzz=0.5):
    """Chord (mm) through a round bar of ``radius`` from image point ``a`` to ``b``, at each pixel."""
    ax, az = a
    dx, dz = b[0] - ax, b[1] - az
    t = np.clip(((U - ax) * dx + (Z - az) * dz) / max(dx * dx + dz * dz, 1e-6), 0.0, 1.0)
    d2 = (U - ax - t * dx) ** 2 + (Z - az - t * dz) ** 2
    return 2.0 * radius * np.maximum(1.0 - d2 / (radius * radius), 0.0) ** fuzz
