"""Labelled films for the view classifier: phantom frontals and laterals, made to look like real exports.

`render_films` draws patients (with findings) and renders both views. `augment` adds what real
exports carry and a phantom may not: loose or tight framing, any aspect ratio, rotation, mirror
images, collimation, burned-in text and side markers, ECG electrodes and leads, lines and tubes,
pacemakers, cut-outs, and processing (gamma, windowing, unsharp masking, blur, noise, JPEG). Every
overlay is drawn on both views alike, so none of them tells the views apart. `other_film` makes
pictures that are no upright chest film (noise, blanks, gradients, shapes, shuffled tiles, a film on
its side) so the classifier learns to say so. Everything is deterministic in its random generator.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from sample_data.anatomy import random_patient
from sample_data.findings import random_findings
from sample_data.phantom import simulate
from sample_data.variants import random_exam

__all__ = ["CLASSES", "Films", "augment", "other_film", "render_films"]

#: The classifier's classes, in the order of its outputs.
CLASSES = ("frontal", "lateral", "other")
_WORDS = (
    "L",
    "R",
    "AP",
    "PA",
    "LAT",
    "PORTABLE",
    "SUPINE",
    "ERECT",
    "UPRIGHT",
    "SITTING",
    "SEMI-ERECT",
    "bedside",
    "AP SUPINE",
    "INSP",
    "LEFT",
    "RIGHT",
    "CHEST",
    "1",
    "2",
    "09:41",
    "12/03",
    "ID 40213",
    "mAs 2.5",
    "kV 110",
)


@dataclass
class Films:
    """Rendered films (uint8, bright = dense) with their class index into `CLASSES` and patient seed."""

    images: list[np.ndarray]
    labels: np.ndarray  # [N] int64
    patients: np.ndarray  # [N] int64, the seed of the patient each film shows


def render_films(n_patients: int, seed: int, size: int = 256, first: int = 0) -> Films:
    """Both views of patients `first` .. `first + n_patients - 1` of stream `seed`, with random exams
    (65 % with findings), about `size` px tall, as uint8. A patient depends only on (seed, index).

    Films are rendered at twice `size` and shrunk: rendered small, the phantom draws its vessels and
    hila as blobs; shrunk from twice the size they are thin lines, as on a real film.
    """
    images, labels, patients = [], [], []
    for index in range(first, first + n_patients):
        rng = np.random.default_rng([seed, index, 7])
        patient = random_patient(rng)
        views = simulate(patient, random_findings(rng), size=2 * size, exam=random_exam(rng))
        for label, film in ((0, views.frontal), (1, views.lateral)):
            rows, cols = film.shape
            small = Image.fromarray(np.clip(film, 0.0, 1.0).astype(np.float32)).resize(
                (max(1, cols // 2), max(1, rows // 2)), Image.BOX
            )
            images.append(np.round(np.asarray(small) * 255.0).astype(np.uint8))
            labels.append(label)
            patients.append(patient.seed)
    return Films(images, np.asarray(labels, np.int64), np.asarray(patients, np.int64))


def augment(film: np.ndarray, rng: np.random.Generator, *, regularise: bool = True) -> np.ndarray:
    """One random real-looking export of `film` (uint8 or [0, 1] float): float32 [0, 1], any shape.

    `regularise` adds what no real film needs to look like but training benefits from (random
    blobs, cut-outs, and crops that cut off part of the chest); validation sets leave it out.
    """
    img = _as_float(film)
    img = _surround(img, rng)
    img = _frame(img, rng, min_zoom=0.6 if regularise else 0.85)
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
    if regularise:
        img = _blobs(img, rng)
    img = _overlays(img, rng)
    img = _collimate(img, rng)
    if regularise:
        img = _cutout(img, rng)
    return _process(img, rng)


def other_film(films: list[np.ndarray], rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A picture that is not an upright chest film, augmented like the films: float32 [0, 1]."""
    kind = rng.choice(6, p=[0.2, 0.1, 0.12, 0.13, 0.25, 0.2])
    if kind == 0:  # noise, white or smoothed
        img = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), rng.uniform(0, 8))
    elif kind == 1:  # a blank exposure
        img = np.full((size, size), rng.uniform(0.0, 1.0), np.float32)
        img += rng.normal(0.0, rng.uniform(0.001, 0.02), img.shape).astype(np.float32)
    elif kind == 2:  # a gradient
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        angle = rng.uniform(0, 2 * np.pi)
        img = np.cos(angle) * xx + np.sin(angle) * yy
        if rng.random() < 0.5:
            img = np.hypot(xx - rng.uniform(0, 1), yy - rng.uniform(0, 1))
    elif kind == 3:  # random shapes
        canvas = Image.new("L", (size, size), int(rng.integers(0, 256)))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(3, 30))):
            x0, y0 = rng.integers(-size // 4, size, 2)
            w, h = rng.integers(4, size // 2, 2)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=int(rng.integers(0, 256)))
        img = np.asarray(canvas, np.float32) / 255.0
    elif kind == 4:  # a film cut into tiles and shuffled: chest texture without a chest's layout
        src = _as_float(films[int(rng.integers(len(films)))])
        n = int(rng.integers(4, 9))
        t = min(src.shape) // n
        tiles = [
            np.rot90(src[i * t : (i + 1) * t, j * t : (j + 1) * t], int(rng.integers(4)))
            for i in range(n)
            for j in range(n)
        ]
        order = rng.permutation(len(tiles))
        img = np.block([[tiles[order[i * n + j]] for j in range(n)] for i in range(n)])
    else:  # a film on its side or upside down
        src = _as_float(films[int(rng.integers(len(films)))])
        img = np.rot90(src, int(rng.choice([1, 2, 3])))
    img = np.asarray(img, np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.clip(img, 0.0, 1.0)
    return augment(img, rng)


def _as_float(film: np.ndarray) -> np.ndarray:
    if film.dtype == np.uint8:
        return film.astype(np.float32) / 255.0
    return np.clip(film.astype(np.float32), 0.0, 1.0)


def _frame(img: np.ndarray, rng: np.random.Generator, min_zoom: float) -> np.ndarray:
    """Most films framed to the body, the rest loosely (see `_fit_frame`, `_loose_frame`)."""
    return _fit_frame(img, rng) if rng.random() < 0.7 else _loose_frame(img, rng, min_zoom)


def _body_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns (start, stop) of the body: where a smoothed film is well above its background."""
    small = ndimage.gaussian_filter(img, 0.02 * min(img.shape))
    background, body = np.percentile(small, (2, 60))
    mask = small > background + 0.25 * (body - background)
    rows, cols = np.flatnonzero(mask.mean(1) > 0.15), np.flatnonzero(mask.mean(0) > 0.15)
    if len(rows) < 4 or len(cols) < 4:
        return 0, img.shape[0], 0, img.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _fit_frame(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The body stretched to about fill a frame of any aspect ratio, as real exports are cropped.

    A phantom lateral is a narrow upright band in a square film, where a real lateral's depth fills
    the frame; fitting both views to the frame leaves the body's proportions no clue to the view.
    """
    top, bottom, left, right = _body_box(img)
    out_rows = int(rng.integers(150, 240))
    out_cols = int(round(out_rows * np.exp(rng.uniform(np.log(0.75), np.log(1.3)))))
    step_r = (bottom - top) / (rng.uniform(0.8, 1.1) * out_rows)  # source pixels per output pixel
    step_c = (right - left) / (rng.uniform(0.85, 1.12) * out_cols)
    angle = np.deg2rad(np.clip(rng.normal(0.0, 6.0), -15.0, 15.0)) if rng.random() < 0.7 else 0.0
    centre = np.array(
        [
            (top + bottom) / 2 + rng.normal(0.0, 0.04) * (bottom - top),
            (left + right) / 2 + rng.normal(0.0, 0.04) * (right - left),
        ]
    )
    return _resample(img, out_rows, out_cols, step_r, step_c, angle, centre, rng)


def _resample(
    img: np.ndarray,
    out_rows: int,
    out_cols: int,
    step_r: float,
    step_c: float,
    angle: float,
    centre: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sample `img` on a rotated, scaled and (in proportions) warped grid around `centre`."""
    cos, sin = np.cos(angle), np.sin(angle)
    matrix = np.array([[cos, -sin], [sin, cos]]) @ np.diag([step_r, step_c])
    # Habitus, inspiration and magnification change the proportions (a wide or narrow mediastinum,
    # tall or short lungs): a smooth monotone warp of the rows and of the columns of the frame.
    r = _warp(np.arange(out_rows, dtype=np.float32), rng) if rng.random() < 0.7 else np.arange(out_rows)
    c = _warp(np.arange(out_cols, dtype=np.float32), rng) if rng.random() < 0.7 else np.arange(out_cols)
    grid = np.stack(np.meshgrid(r - out_rows / 2, c - out_cols / 2, indexing="ij"))  # [2, rows, cols]
    source = np.tensordot(matrix, grid, axes=1) + centre[:, None, None]
    fill = 0.0 if rng.random() < 0.75 else float(rng.choice([1.0, rng.uniform(0.2, 0.8)]))
    return ndimage.map_coordinates(img, source, order=1, mode="constant", cval=fill).astype(np.float32)


def _loose_frame(img: np.ndarray, rng: np.random.Generator, min_zoom: float) -> np.ndarray:
    """Zoom (from `min_zoom` of the film's height to a little outside it), stretch, warp, rotate and shift."""
    rows, cols = img.shape
    out_rows = int(rng.integers(150, 240))
    out_cols = int(round(out_rows * np.exp(rng.uniform(np.log(0.7), np.log(1.35)))))
    zoom = rng.uniform(min_zoom, 1.1)  # the fraction of the film's height the frame shows
    stretch = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))  # content wider (>1) or narrower
    angle = np.deg2rad(np.clip(rng.normal(0.0, 6.0), -15.0, 15.0)) if rng.random() < 0.7 else 0.0
    step_r = zoom * rows / out_rows  # source pixels per output pixel
    centre = np.array([rows / 2 + rng.normal(0.0, 0.08) * rows, cols / 2 + rng.normal(0.0, 0.07) * cols])
    return _resample(img, out_rows, out_cols, step_r, step_r / stretch, angle, centre, rng)


def _warp(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random monotone piecewise-linear remap of coordinates 0..n-1 onto themselves (ends fixed)."""
    n = len(x)
    knots = np.linspace(0.0, n - 1.0, 6)
    moved = knots.copy()
    moved[1:-1] += rng.uniform(-0.07, 0.07, 4) * n
    return np.interp(x, knots, np.maximum.accumulate(moved)).astype(np.float32)


def _curve(
    rng: np.random.Generator, start: np.ndarray, end: np.ndarray, bend: float
) -> list[tuple[float, float]]:
    """A smooth cubic Bezier from `start` to `end` (x, y), its control points pushed sideways by `bend`."""
    d = end - start
    normal = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-6)
    c1 = start + d / 3 + normal * rng.normal(0.0, bend)
    c2 = start + 2 * d / 3 + normal * rng.normal(0.0, bend)
    t = np.linspace(0.0, 1.0, 40)[:, None]
    pts = (1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * end
    return [(float(x), float(y)) for x, y in pts]


def _overlays(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Electrodes and leads, lines and tubes, a pacemaker, side markers and burned-in text."""
    rows, cols = img.shape
    side = min(rows, cols)
    alpha = Image.new("L", (cols, rows), 0)  # how much of the overlay covers each pixel
    value = Image.new("L", (cols, rows), 0)  # its brightness
    a, v = ImageDraw.Draw(alpha), ImageDraw.Draw(value)

    def line(points, width, bright, cover=255):
        a.line(points, fill=cover, width=width)
        v.line(points, fill=bright, width=width)

    def blob(box, bright, cover=255, ellipse=True):
        (a.ellipse if ellipse else a.rounded_rectangle)(box, fill=cover, **({} if ellipse else {"radius": 3}))
        (v.ellipse if ellipse else v.rounded_rectangle)(
            box, fill=bright, **({} if ellipse else {"radius": 3})
        )

    def spot() -> np.ndarray:
        return np.array([rng.uniform(0.05, 0.95) * cols, rng.uniform(0.05, 0.95) * rows])

    if rng.random() < 0.35:  # ECG electrodes, most with a lead running off
        for _ in range(int(rng.integers(2, 8))):
            c, r = spot(), rng.uniform(0.012, 0.03) * side
            bright = int(rng.integers(170, 256))
            blob((c[0] - r, c[1] - r, c[0] + r, c[1] + r), int(bright * 0.7), int(rng.integers(120, 256)))
            blob((c[0] - r / 3, c[1] - r / 3, c[0] + r / 3, c[1] + r / 3), bright)
            if rng.random() < 0.7:
                end = np.array([rng.choice([0.0, cols]), rng.uniform(0, rows)])
                line(_curve(rng, c, end, 0.2 * side), int(rng.integers(1, 3)), bright)
    if rng.random() < 0.3:  # lines and tubes from the top: endotracheal, nasogastric, central lines
        for _ in range(int(rng.integers(1, 4))):
            start = np.array([rng.uniform(0.2, 0.8) * cols, 0.0])
            end = np.array([rng.uniform(0.15, 0.85) * cols, rng.uniform(0.3, 1.0) * rows])
            line(_curve(rng, start, end, 0.15 * side), int(rng.integers(1, 4)), int(rng.integers(150, 256)))
    if rng.random() < 0.1:  # a pacemaker and its leads
        c = np.array([rng.choice([0.2, 0.8]) * cols, rng.uniform(0.1, 0.3) * rows]) + rng.normal(
            0, 0.03 * side, 2
        )
        w, h = rng.uniform(0.06, 0.1) * side, rng.uniform(0.05, 0.08) * side
        blob((c[0] - w, c[1] - h, c[0] + w, c[1] + h), 255, ellipse=rng.random() < 0.5)
        for _ in range(int(rng.integers(1, 3))):
            end = np.array([rng.uniform(0.35, 0.65) * cols, rng.uniform(0.45, 0.75) * rows])
            line(_curve(rng, c, end, 0.15 * side), 2, 240)
    if rng.random() < 0.15:  # clips, buttons, jewellery
        for _ in range(int(rng.integers(1, 6))):
            c, r = spot(), rng.uniform(0.005, 0.02) * side
            blob(
                (c[0] - r, c[1] - r, c[0] + r, c[1] + r),
                int(rng.integers(200, 256)),
                ellipse=rng.random() < 0.6,
            )
    if rng.random() < 0.6:  # side markers and burned-in text, mostly near the edges
        for _ in range(int(rng.integers(1, 4))):
            text = str(rng.choice(_WORDS))
            font = ImageFont.load_default(size=max(6, int(rng.uniform(0.03, 0.09) * side)))
            x0, y0, x1, y1 = a.textbbox((0, 0), text, font=font)
            near = rng.random() < 0.8
            x = (
                rng.choice([rng.uniform(0.01, 0.12), rng.uniform(0.6, 0.95)])
                if near
                else rng.uniform(0.05, 0.8)
            )
            y = (
                rng.choice([rng.uniform(0.01, 0.1), rng.uniform(0.8, 0.95)])
                if near
                else rng.uniform(0.05, 0.9)
            )
            at = (float(x * cols), float(y * rows))
            bright = 255 if rng.random() < 0.75 else 0
            if rng.random() < 0.3:  # a marker in a box
                box = (at[0] - 2, at[1] - 2, at[0] + x1 - x0 + 4, at[1] + y1 - y0 + 4)
                a.rectangle(box, fill=255)
                v.rectangle(box, fill=255 - bright)
            a.text(at, text, fill=255, font=font)
            v.text(at, text, fill=bright, font=font)
    cover = np.asarray(alpha, np.float32) / 255.0
    if not cover.any():
        return img
    bright = np.asarray(value, np.float32) / 255.0
    return img * (1.0 - cover) + bright * cover


def _collimate(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Collimator shutters or a mask on some edges: black, white or grey bands."""
    if rng.random() >= 0.35:
        return img
    img = img.copy()
    rows, cols = img.shape
    for edge in range(4):
        if rng.random() < 0.5:
            continue
        width = int(rng.uniform(0.02, 0.16) * (rows if edge < 2 else cols))
        fill = float(rng.choice([0.0, 1.0, rng.uniform(0.2, 0.8)], p=[0.5, 0.3, 0.2]))
        band = (slice(0, width), slice(rows - width, rows), slice(0, width), slice(cols - width, cols))[edge]
        if edge < 2:
            img[band, :] = fill
        else:
            img[:, band] = fill
    return img


def _surround(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The air around the body filled with bright, smooth soft tissue, as arms, a large patient or a
    white surround fill real frames: dark surroundings must not tell the view."""
    if rng.random() >= 0.3:
        return img
    small = ndimage.zoom(img, 0.25, order=1)
    labels, _ = ndimage.label(small < rng.uniform(0.08, 0.2))
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    air = np.isin(labels, edge[edge > 0]).astype(np.float32)
    air = ndimage.zoom(air, (img.shape[0] / small.shape[0], img.shape[1] / small.shape[1]), order=1)
    air = ndimage.gaussian_filter(air[: img.shape[0], : img.shape[1]], 0.02 * min(img.shape))
    field = rng.uniform(0.45, 0.95) + ndimage.gaussian_filter(
        rng.normal(0.0, 1.0, img.shape), 0.08 * min(img.shape)
    )
    return (img * (1.0 - air) + np.clip(field, 0.0, 1.0) * air).astype(np.float32)


def _blobs(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft round densities anywhere (nodes, masses, breast shadows, pads): hilar-like blobs tell no view."""
    if rng.random() >= 0.4:
        return img
    rows, cols = img.shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    img = img.copy()
    for _ in range(int(rng.integers(1, 7))):
        r = rng.uniform(0.03, 0.1) * min(rows, cols)
        cy, cx = rng.uniform(0.1, 0.9) * rows, rng.uniform(0.1, 0.9) * cols
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2 * rng.uniform(0.5, 2.0)) / (2 * r * r))
        img += rng.uniform(-0.15, 0.35) * bump
    return np.clip(img, 0.0, 1.0)


def _cutout(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rectangles blanked out (labels pasted over the film, damaged areas): no one structure is needed."""
    if rng.random() >= 0.35:
        return img
    img = img.copy()
    rows, cols = img.shape
    for _ in range(int(rng.integers(1, 5))):
        h, w = int(rng.uniform(0.05, 0.2) * rows), int(rng.uniform(0.05, 0.2) * cols)
        r, c = int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))
        img[r : r + h, c : c + w] = rng.uniform(0.0, 1.0)
    return img


def _process(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Processing: range compression, look-up table, windowing, unsharp mask, blur, noise, resolution, JPEG."""
    img = np.clip(img, 0.0, 1.0)
    if rng.random() < 0.6:
        # Dynamic range compression as CR/DX processing does it: the large-scale density is pulled
        # towards the mean, so lungs turn grey and the mediastinum and abdomen stop being white.
        broad = ndimage.gaussian_filter(img, rng.uniform(0.05, 0.25) * min(img.shape), truncate=2.0)
        img = img - rng.uniform(0.3, 0.95) * broad
        lo, hi = np.percentile(img, (0.5, 99.5))
        img = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if rng.random() < 0.5:
        # Uneven exposure (heel effect, patient thickness, processing): a smooth multiplicative field.
        small = ndimage.zoom(rng.normal(0.0, 0.3, (4, 4)), (img.shape[0] / 4, img.shape[1] / 4), order=3)
        img = np.clip(img * np.exp(small[: img.shape[0], : img.shape[1]]), 0.0, 1.0)
    if rng.random() < 0.5:  # a random monotone look-up table
        knots = np.sort(rng.uniform(0.1, 0.9, 3))
        img = np.interp(
            img, [0.0, *knots, 1.0], [0.0, *np.sort(np.clip(knots + rng.normal(0, 0.12, 3), 0, 1)), 1.0]
        )
    else:
        img = img ** np.exp(rng.normal(0.0, 0.35))
    if rng.random() < 0.4:  # a narrow window: burned-out lungs or white-out bones
        lo, hi = rng.uniform(0.0, 0.2), rng.uniform(0.75, 1.0)
        img = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    if rng.random() < 0.3:
        img = img + rng.uniform(0.3, 1.5) * (img - ndimage.gaussian_filter(img, rng.uniform(2.0, 8.0)))
    if rng.random() < 0.3:
        img = ndimage.gaussian_filter(img, rng.uniform(0.3, 1.5))
    if rng.random() < 0.2:  # a low-resolution export, scaled back up
        rows, cols = img.shape
        factor = rng.uniform(2.0, 4.0)
        small = Image.fromarray(img.astype(np.float32)).resize(
            (max(8, int(cols / factor)), max(8, int(rows / factor))), Image.BILINEAR
        )
        img = np.asarray(small.resize((cols, rows), Image.BILINEAR), np.float32)
    if rng.random() < 0.5:
        img = img + rng.normal(0.0, rng.uniform(0.005, 0.05), img.shape)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(
            buffer, "JPEG", quality=int(rng.integers(10, 90))
        )
        img = np.asarray(Image.open(buffer), np.float32) / 255.0
    return img
