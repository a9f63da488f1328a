"""Renderer styles for the synthetic shapes of :mod:`vistag.synth.shapes`.

- ``"classic"``: the original renderer (grey-ish plain or noisy backgrounds), drawn by
  :func:`vistag.synth.corpus.draw`; nothing here changes it.
- ``"varied"``: the training distribution of the test model: backgrounds of any hue (always
  clearly different from the shape colours), plain, gradient, blotchy, grainy or an irregular
  patchwork; shapes of many
  sizes and positions, rotated by up to 40 degrees; pixel noise, blur and JPEG quality 30-95.
- ``"poster"``: held out from training: two-colour stripes, checkers or dots behind the shapes,
  shapes with a dark outline and/or a drop shadow, and a lighting gradient or vignette.

Shape colours keep their names in every style: only a small jitter is added to the named RGB value.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vistag.synth.shapes import COLORS, ShapeSpec, shape_mask

__all__ = ["HELD_OUT_STYLE", "STYLES", "TRAIN_STYLES", "check_style", "jpeg_quality", "render"]

STYLES: tuple[str, ...] = ("classic", "varied", "poster")
#: Styles the test model in ``tests/fixtures/shapes-clip`` is trained on.
TRAIN_STYLES: tuple[str, ...] = ("classic", "varied")
#: The style the test model never sees in training (measures robustness to a new renderer).
HELD_OUT_STYLE = "poster"

# radius as a fraction of the central square, by number of shapes and size
_RADIUS = {
    1: {"small": (0.12, 0.19), "large": (0.22, 0.40)},
    2: {"small": (0.07, 0.12), "large": (0.14, 0.22)},
}
_OUTLINE = np.array([22.0, 22.0, 26.0])
# degrees; the poster style stays inside the range the test model is trained on
_MAX_ROTATION = {"varied": 40.0, "poster": 30.0}


def check_style(style: str) -> None:
    """Raise ``ValueError`` unless ``style`` is one of :data:`STYLES`."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, not {style!r}")


def jpeg_quality(style: str, rng: np.random.Generator) -> int:
    """JPEG quality for saving an image of ``style`` (90 for classic, drawn from ``rng`` otherwise)."""
    check_style(style)
    if style == "classic":
        return 90
    low = 30 if style == "varied" else 45
    return int(rng.integers(low, 96))


def distinct_color(
    rng: np.random.Generator, avoid: Sequence[np.ndarray], min_dist: float = 120.0
) -> np.ndarray:
    """A random RGB colour (float, shape (3,)) of any hue at least ``min_dist`` (Euclidean) from
    every colour in ``avoid``."""
    best, best_d = np.zeros(3), -1.0
    for _ in range(200):
        hue, sat, val = rng.random(), rng.uniform(0.0, 0.9), rng.uniform(0.12, 0.97)
        c = np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255.0
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=1e9)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy, xx


def _varied_background(
    avoid: Sequence[np.ndarray], width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """(height, width, 3) float canvas: plain, two-colour gradient, blotchy noise, fine grain or
    irregular patchwork."""
    base = distinct_color(rng, avoid)
    canvas = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    kind = int(rng.integers(5))
    if kind == 1:
        other = distinct_color(rng, avoid)
        yy, xx = _grid(height, width)
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = ((t - t.min()) / max(1e-6, float(t.max() - t.min())))[..., None]
        canvas = canvas * (1 - t) + other * t
    elif kind == 2:
        cell = int(rng.integers(6, 20))
        lo_h, lo_w = max(2, height // cell), max(2, width // cell)
        amp = rng.uniform(10.0, 28.0)
        lo = rng.normal(0.0, amp, size=(lo_h, lo_w, 1)) + rng.normal(0.0, amp * 0.6, size=(lo_h, lo_w, 3))
        lo_img = Image.fromarray(np.clip(lo + 128, 0, 255).astype(np.uint8))
        canvas = canvas + np.asarray(lo_img.resize((width, height), Image.BILINEAR), np.float32) - 128
    elif kind == 3:
        canvas = canvas + rng.normal(0.0, rng.uniform(5.0, 16.0), size=(height, width, 3))
    elif kind == 4:
        canvas = _patchwork(canvas, avoid, rng)
    return np.clip(canvas, 0, 255)


def _patchwork(canvas: np.ndarray, avoid: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Irregular hard-edged cells (a Voronoi diagram of 3-9 random points) in 2-3 colours."""
    height, width = canvas.shape[:2]
    palette = [canvas[0, 0]] + [distinct_color(rng, avoid) for _ in range(int(rng.integers(1, 3)))]
    points = rng.uniform(0, 1, size=(int(rng.integers(3, 10)), 2)) * (height, width)
    yy, xx = _grid(height, width)
    nearest = np.argmin((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2, axis=-1)
    cell_colour = np.stack([palette[int(k)] for k in rng.integers(0, len(palette), size=len(points))])
    return cell_colour[nearest].astype(np.float32)


def _poster_background(
    avoid: Sequence[np.ndarray], width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """(height, width, 3) float canvas: two-colour stripes, checkers or dots."""
    first = distinct_color(rng, avoid)
    second = first
    for _ in range(50):
        second = np.clip(first + rng.normal(0.0, 45.0, size=3), 0, 255)
        if (
            min(float(np.linalg.norm(second - a)) for a in avoid) >= 110
            and np.linalg.norm(second - first) > 35
        ):
            break
    yy, xx = _grid(height, width)
    side = min(width, height)
    period = rng.uniform(0.07, 0.2) * side
    kind = int(rng.integers(3))
    if kind == 0:
        a = rng.uniform(0, math.pi)
        on = ((xx * math.cos(a) + yy * math.sin(a)) % period) < period / 2
    elif kind == 1:
        on = ((xx // period + yy // period) % 2) == 0
    else:
        dx = (xx % period) - period / 2
        dy = (yy % period) - period / 2
        on = np.hypot(dx, dy) < period * rng.uniform(0.18, 0.32)
    return np.where(on[..., None], first, second).astype(np.float32)


def _place(
    shapes: Sequence[ShapeSpec], side: int, rng: np.random.Generator
) -> list[tuple[float, float, float]]:
    """Centre and radius (in the central square) of each shape, kept apart where possible."""
    ranges = _RADIUS[1 if len(shapes) == 1 else 2]
    placed: list[tuple[float, float, float]] = []
    for spec in shapes:
        lo_r, hi_r = ranges[spec.size]
        r = rng.uniform(lo_r, hi_r) * side
        margin = r + 0.02 * side + 1
        cx = cy = side / 2.0
        for _attempt in range(60):
            cx = rng.uniform(margin, max(margin, side - margin))
            cy = rng.uniform(margin, max(margin, side - margin))
            if all(math.hypot(cx - px, cy - py) > r + pr + 1 for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
    return placed


def _alpha(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask, np.float32)[..., None] / 255.0


def _draw_poster_extras(
    canvas: np.ndarray, mask: Image.Image, side: int, rng: np.random.Generator
) -> np.ndarray:
    """Drop shadow and/or dark outline of one shape (its fill is drawn afterwards)."""
    kind = int(rng.integers(3))  # 0 outline, 1 shadow, 2 both
    if kind >= 1:
        off = max(1, round(side * rng.uniform(0.025, 0.05)))
        shadow = Image.new("L", mask.size, 0)
        shadow.paste(mask, (off, off))
        shadow = shadow.filter(ImageFilter.GaussianBlur(max(0.5, side / 80)))
        canvas = canvas * (1.0 - 0.55 * _alpha(shadow))
    if kind != 1:
        width = max(1, round(side / 64 * rng.uniform(1.0, 2.0)))
        grown = mask.filter(ImageFilter.MaxFilter(2 * width + 1))
        a = _alpha(grown)
        canvas = canvas * (1.0 - a) + _OUTLINE * a
    return canvas


def _lighting(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A vignette or a linear lighting gradient (brightness factor about 0.8-1.08)."""
    height, width = canvas.shape[:2]
    yy, xx = _grid(height, width)
    if rng.random() < 0.5:
        d = np.hypot((xx - width / 2) / (width / 2), (yy - height / 2) / (height / 2)) / math.sqrt(2)
        factor = 1.04 - rng.uniform(0.12, 0.22) * d**2
    else:
        a = rng.uniform(0, 2 * math.pi)
        t = xx / width * math.cos(a) + yy / height * math.sin(a)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        factor = 0.82 + rng.uniform(0.16, 0.26) * t
    return np.clip(canvas * factor[..., None], 0, 255)


def _clutter(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Varied style: 1-4 thin strokes (lines or arcs, dark or in any colour) and maybe a soft dark
    blot behind the shapes, so that thin or blurred dark marks do not read as a black shape."""
    height, width = canvas.shape[:2]
    side = min(width, height)
    layer = Image.fromarray(np.round(canvas).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 5))):
        dark = rng.random() < 0.6
        ink = tuple(int(v) for v in (rng.integers(0, 70, size=3) if dark else rng.integers(0, 256, size=3)))
        stroke = max(1, round(side * rng.uniform(0.01, 0.035)))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, 1, size=4) * (width, height, width, height))
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=ink, width=stroke)
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 2, max(y0, y1) + 2]
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(60, 300)), fill=ink, width=stroke)
    out = np.asarray(layer, np.float32)
    if rng.random() < 0.4:
        yy, xx = _grid(height, width)
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), side * rng.uniform(0.08, 0.25)
        blot = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))[..., None]
        out = out * (1.0 - rng.uniform(0.3, 0.6) * blot)
    return out


def _degrade(img: Image.Image, side: int, rng: np.random.Generator) -> Image.Image:
    """Varied style: a global brightness change, random pixel noise, blur and an in-memory JPEG
    round trip."""
    if rng.random() < 0.5:
        arr = np.asarray(img, np.float32) * rng.uniform(0.85, 1.12) * rng.uniform(0.97, 1.03, size=3)
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.35:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.1) * side / 96))
    if rng.random() < 0.5:
        arr = np.asarray(img, np.float32) + rng.normal(
            0.0, rng.uniform(2.0, 10.0), size=(img.height, img.width, 3)
        )
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.4:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(30, 96)))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def render(
    shapes: Sequence[ShapeSpec],
    *,
    style: str,
    width: int,
    height: int,
    rng: np.random.Generator,
    fills: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Draw ``shapes`` in the ``"varied"`` or ``"poster"`` style on a ``width`` x ``height`` RGB image.

    Shapes stay inside the central square (a centre crop never cuts them off). ``fills`` overrides
    the RGB colour of each shape (the training script uses it for colours without a name).
    """
    if style not in ("varied", "poster"):
        raise ValueError(f"render draws the 'varied' and 'poster' styles, not {style!r}")
    if not shapes:
        raise ValueError("need at least one shape")
    colors = [np.asarray(c, np.float32) for c in (fills or [COLORS[s.color] for s in shapes])]
    if len(colors) != len(shapes):
        raise ValueError("need one fill colour per shape")
    background = _varied_background if style == "varied" else _poster_background
    canvas = background(colors, width, height, rng)
    if style == "varied" and rng.random() < 0.5:
        canvas = _clutter(canvas, rng)
    side = min(width, height)
    ox, oy = (width - side) / 2.0, (height - side) / 2.0
    for spec, col, (cx, cy, r) in zip(shapes, colors, _place(shapes, side, rng), strict=True):
        angle = math.radians(rng.uniform(-1.0, 1.0) * _MAX_ROTATION[style])
        mask = shape_mask(spec, ox + cx, oy + cy, r, angle, width, height)
        if style == "poster":
            canvas = _draw_poster_extras(canvas, mask, side, rng)
        fill = np.clip(col + rng.uniform(-15, 15, size=3), 0, 255)
        canvas = canvas * (1.0 - _alpha(mask)) + fill * _alpha(mask)
    if style == "poster":
        canvas = _lighting(canvas, rng)
    img = Image.fromarray(np.round(canvas).astype(np.uint8), "RGB")
    return _degrade(img, side, rng) if style == "varied" else img
