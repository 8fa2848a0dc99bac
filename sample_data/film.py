"""What happens to a rendered radiograph on its way to a real film: framing, processing, burned-in marks.

``present`` applies the study's ``Film`` to one view: a softer detector, structured noise, a tilted or
off-centre and cropped field, collimation borders (black where the system masks them, white where
they are left unexposed), a lead side marker and burned-in text lines. Placement is drawn from the
film's seed and the view, so the same exam gives the same pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sample_data.variants import Exam, Film

__all__ = ["present"]


def present(img: np.ndarray, view: str, exam: Exam, pixel_mm: float) -> tuple[np.ndarray, bool]:
    """The film as it would be stored, and whether text or a marker was burned into it."""
    film = exam.film
    rng = np.random.default_rng([film.seed, 7, 0 if view == "frontal" else 1])
    if film.soft:
        img = _soften(img, rng.uniform(1.6, 2.6))
    if film.grain:
        img = _grain(img, rng)
    img = _frame(img, film, rng)
    if film.collimation != "none":
        img = _collimate(img, film.collimation == "white", rng)
    annotated = False
    if film.marker:
        _marker(img, _side_letter(view, exam), view, exam, rng)
        annotated = True
    if film.text:
        _text(img, film.text, rng)
        annotated = True
    np.clip(img, 0.0, 1.0, out=img)
    return img, annotated


def _resize(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((cols, rows), Image.BILINEAR))


def _soften(img: np.ndarray, factor: float) -> np.ndarray:
    """A blurrier detector or heavier smoothing: down and up again through bilinear resampling."""
    rows, cols = img.shape
    small = _resize(img, max(8, int(rows / factor)), max(8, int(cols / factor)))
    return np.array(_resize(small, rows, cols))


def _grain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Structured detector noise: low-frequency mottle and faint line banding."""
    rows, cols = img.shape
    mottle = rng.standard_normal((max(rows // 16, 2), max(cols // 16, 2))).astype(np.float32)
    out = img + 0.025 * _resize(mottle, rows, cols)
    bands = np.cumsum(rng.standard_normal(rows if rng.random() < 0.5 else cols)).astype(np.float32)
    bands = 0.012 * (bands - bands.mean()) / (bands.std() + 1e-6)
    out += bands[:, None] if bands.size == rows else bands[None, :]
    return out


def _frame(img: np.ndarray, film: Film, rng: np.random.Generator) -> np.ndarray:
    """Tilt, shift and crop the field: the chest is not always upright or centred, and the stored
    image is rarely the whole detector. The kept window always lies inside the rendered field."""
    rows, cols = img.shape
    angle = np.deg2rad(rng.uniform(1.0, 5.0) * rng.choice([-1.0, 1.0])) if film.tilted else 0.0
    if film.off_centre:
        keep_r, keep_c = rng.uniform(0.78, 0.92), rng.uniform(0.78, 0.92)
    elif film.cropped:
        keep_r, keep_c = rng.uniform(0.93, 1.0), rng.uniform(0.93, 1.0)
    else:
        keep_r = keep_c = 1.0
    c, s = float(np.cos(angle)), float(np.sin(angle))
    # Shrink the window until its tilted corners fit, then shift it by what room is left.
    out_r, out_c = rows * keep_r, cols * keep_c
    fit = min(1.0, rows / (out_r * c + out_c * abs(s)), cols / (out_c * c + out_r * abs(s)))
    out_r, out_c = max(8, int(out_r * fit)), max(8, int(out_c * fit))
    room_r = (rows - (out_r * c + out_c * abs(s))) / 2
    room_c = (cols - (out_c * c + out_r * abs(s))) / 2
    shift = (rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)) if film.off_centre else (0.0, 0.0)
    cy, cx = rows / 2 + shift[0] * max(room_r, 0.0), cols / 2 + shift[1] * max(room_c, 0.0)
    if angle == 0.0:
        r0, c0 = int(round(cy - out_r / 2)), int(round(cx - out_c / 2))
        return np.ascontiguousarray(img[r0 : r0 + out_r, c0 : c0 + out_c])
    # Output pixel (x, y) -> input: rotate about the output centre, then place at the window centre.
    off_x = cx - (c * out_c / 2 - s * out_r / 2)
    off_y = cy - (s * out_c / 2 + c * out_r / 2)
    moved = Image.fromarray(img).transform(
        (out_c, out_r), Image.AFFINE, (c, -s, off_x, s, c, off_y), resample=Image.BILINEAR
    )
    return np.array(moved)


def _collimate(img: np.ndarray, white: bool, rng: np.random.Generator) -> np.ndarray:
    """Collimator edges along one to four sides, slightly slanted, with a soft penumbra."""
    rows, cols = img.shape
    edges = [e for e in ("top", "bottom", "left", "right") if rng.random() < 0.5] or ["left", "right"]
    level = rng.uniform(0.86, 1.0) if white else rng.uniform(0.0, 0.05)
    for edge in edges:
        across = cols if edge in ("left", "right") else rows
        along = rows if edge in ("left", "right") else cols
        width = rng.uniform(0.02, 0.09) * across
        slope = np.tan(np.deg2rad(rng.uniform(-1.5, 1.5)))
        band = int(min(across, np.ceil(width + abs(slope) * along + 4)))
        t = np.arange(along, dtype=np.float32)[:, None]
        d = np.arange(band, dtype=np.float32)[None, :]
        inside = np.clip((width + slope * (t - along / 2) - d) / 1.5 + 0.5, 0.0, 1.0)  # 1 = covered
        region = {
            "left": (slice(None), slice(0, band)),
            "right": (slice(None), slice(cols - band, cols)),
            "top": (slice(0, band), slice(None)),
            "bottom": (slice(rows - band, rows), slice(None)),
        }[edge]
        mask = inside if edge in ("left", "right") else inside.T
        if edge == "right":
            mask = mask[:, ::-1]
        elif edge == "bottom":
            mask = mask[::-1, :]
        sub = img[region]
        sub += (level - sub) * mask
    return img


def _side_letter(view: str, exam: Exam) -> str:
    """Left lateral films carry an L; frontals mark either side."""
    rng = np.random.default_rng([exam.film.seed, 8])
    if view == "lateral":
        return "L" if rng.random() < 0.85 else "R"
    return "L" if rng.random() < 0.6 else "R"


@lru_cache(maxsize=32)
def _font(px: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(px, 6))


def _marker(img: np.ndarray, letter: str, view: str, exam: Exam, rng: np.random.Generator) -> None:
    """A lead side marker: a bold letter, sometimes boxed, near a top corner on the side it names."""
    rows, cols = img.shape
    px = int(rows * rng.uniform(0.035, 0.06))
    if view == "frontal":  # patient's left is on the image's right
        right = letter == "L"
    else:  # a left lateral's marker sits in front or behind, whichever the technologist chose
        right = rng.random() < 0.5
    x = int(cols * (rng.uniform(0.78, 0.9) if right else rng.uniform(0.04, 0.14)))
    y = int(rows * rng.uniform(0.03, 0.2))
    _burn(img, x, y, [letter], px, boxed=rng.random() < 0.5, value=rng.uniform(0.85, 1.0))


def _text(img: np.ndarray, lines: tuple[str, ...], rng: np.random.Generator) -> None:
    """Burned-in annotation lines in one corner."""
    rows, cols = img.shape
    px = int(rows * rng.uniform(0.022, 0.035))
    corner = int(rng.integers(4))
    x = int(cols * (0.03 if corner % 2 == 0 else rng.uniform(0.55, 0.65)))
    y = int(rows * (0.03 if corner < 2 else 0.97) - (0 if corner < 2 else 1.3 * px * len(lines)))
    _burn(img, x, max(y, 0), list(lines), px, boxed=False, value=rng.uniform(0.8, 1.0))


def _burn(img: np.ndarray, x: int, y: int, lines: list[str], px: int, boxed: bool, value: float) -> None:
    """Write ``lines`` at (x, y) into the image at ``value`` (anti-aliased), only touching their box."""
    font = _font(px)
    height = int(1.3 * px * len(lines)) + 6
    width = int(max(font.getlength(line) for line in lines)) + 8
    rows, cols = img.shape
    x = min(max(x, 0), max(cols - width, 0))
    y = min(max(y, 0), max(rows - height, 0))
    h, w = min(height, rows - y), min(width, cols - x)
    if h <= 0 or w <= 0:
        return
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    for i, line in enumerate(lines):
        draw.text((4, 2 + int(1.3 * px * i)), line, fill=255, font=font)
    if boxed:
        draw.rectangle((0, 0, width - 1, height - 1), outline=255, width=max(1, px // 10))
    alpha = np.asarray(mask, np.float32)[:h, :w] / 255.0
    sub = img[y : y + h, x : x + w]
    sub += (value - sub) * alpha
