"""Synthetic captioned images of coloured shapes.

Used by the test-suite, benchmarks, the offline demo and the script that trains
the tiny test model in ``tests/fixtures/shapes-clip`` (see
``tests/fixtures/train_shapes_clip.py``).  Everything is deterministic for a
given :class:`numpy.random.Generator` state / seed.

Example::

    rng = np.random.default_rng(0)
    spec = ShapeSpec("red", "circle", "large")
    img = synth.draw([spec], image_size=96, rng=rng)   # PIL RGB image (vistag.synth.corpus)
    caption([spec], rng)                          # e.g. "a photo of a red circle"
    label(spec)                                   # "red circle"
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "SHAPES",
    "SIZES",
    "HELD_OUT",
    "LABELS",
    "ShapeSpec",
    "caption",
    "label",
    "random_spec",
    "shape_mask",
    "stretched",
]

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "green": (20, 150, 45),
    "blue": (25, 65, 215),
    "yellow": (250, 220, 20),
    "purple": (125, 35, 170),
    "orange": (250, 130, 10),
    "black": (10, 10, 10),
    "white": (250, 250, 250),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")

SIZES: tuple[str, ...] = ("small", "large")

#: Colour/shape combinations never shown to the test model during training.
#: One per shape, six different colours; every colour and every shape still
#: occurs in training with other partners.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("green", "ring"),
        ("blue", "triangle"),
        ("yellow", "cross"),
        ("purple", "circle"),
        ("orange", "square"),
    }
)


@dataclass(frozen=True)
class ShapeSpec:
    color: str
    shape: str
    size: str = "large"

    def __post_init__(self) -> None:
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")


def label(spec: ShapeSpec) -> str:
    """Tag label of a shape: colour + shape, e.g. ``"red circle"``."""
    return f"{spec.color} {spec.shape}"


#: All 48 "colour shape" labels, colour-major order.
LABELS: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)


def random_spec(
    rng: np.random.Generator,
    combos: Iterable[tuple[str, str]] | None = None,
) -> ShapeSpec:
    """A random :class:`ShapeSpec`, optionally restricted to (colour, shape) pairs."""
    if combos is not None:
        pool = sorted(set(combos))
        if not pool:
            raise ValueError("combos is empty")
        color, shape = pool[int(rng.integers(len(pool)))]
    else:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    return ShapeSpec(color, shape, size)


# --------------------------------------------------------------------------- drawing

_SUPERSAMPLE = 2
# radius as a fraction of the (square) drawing area, by number of shapes
_RADIUS = {
    1: {"small": (0.12, 0.17), "large": (0.26, 0.36)},
    2: {"small": (0.085, 0.12), "large": (0.16, 0.21)},
}


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _polygon(shape: str, r: float, angle: float) -> np.ndarray | None:
    """Unit-centred polygon vertices (N, 2) for polygonal shapes, else None."""
    if shape == "square":
        h = r * 0.82
        pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    elif shape == "triangle":
        a = np.deg2rad([-90.0, 30.0, 150.0])
        pts = np.stack([np.cos(a), np.sin(a)], axis=1) * r
        pts[:, 1] += r * 0.15  # visually centre (centroid sits above bbox centre)
    elif shape == "star":
        k = np.arange(10)
        a = -np.pi / 2 + k * np.pi / 5
        rad = np.where(k % 2 == 0, r, r * 0.42)
        pts = np.stack([np.cos(a) * rad, np.sin(a) * rad], axis=1)
    elif shape == "cross":
        w = r * 0.32
        pts = np.array(
            [
                [-w, -r],
                [w, -r],
                [w, -w],
                [r, -w],
                [r, w],
                [w, w],
                [w, r],
                [-w, r],
                [-w, w],
                [-r, w],
                [-r, -w],
                [-w, -w],
            ]
        )
    else:
        return None
    return _rotate(pts, angle)


def shape_mask(
    spec: ShapeSpec, cx: float, cy: float, r: float, angle: float, width: int, height: int
) -> Image.Image:
    """Anti-aliased "L" mask (``width`` x ``height``) of one shape centred at (``cx``, ``cy``), radius ``r``."""
    ss = _SUPERSAMPLE
    mask = Image.new("L", (width * ss, height * ss), 0)
    d = ImageDraw.Draw(mask)
    X, Y, R = cx * ss, cy * ss, r * ss
    if spec.shape == "circle":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
    elif spec.shape == "ring":
        d.ellipse([X - R, Y - R, X + R, Y + R], fill=255)
        ri = R * 0.6
        d.ellipse([X - ri, Y - ri, X + ri, Y + ri], fill=0)
    else:
        pts = _polygon(spec.shape, R, angle)
        d.polygon([(float(X + px), float(Y + py)) for px, py in pts], fill=255)
    return mask.resize((width, height), Image.BOX)


def _background_base(colors: Sequence[tuple[int, int, int]], rng: np.random.Generator) -> np.ndarray:
    """A light/mid grey-ish colour clearly different from every shape colour."""
    for _ in range(100):
        g = rng.uniform(120, 200)
        base = np.clip(g + rng.uniform(-14, 14, size=3), 0, 255)
        if all(np.abs(base - np.asarray(c, float)).max() > 60 for c in colors):
            return base
    return base


def _render(
    shapes: Sequence[ShapeSpec],
    *,
    width: int,
    height: int,
    background: str,
    rng: np.random.Generator,
    fills: Sequence[tuple[int, int, int]] | None = None,
) -> Image.Image:
    # ``fills`` (private, used by the model training script) overrides the RGB
    # colour of each shape, e.g. to draw shapes in colours that have no name.
    if background not in ("plain", "noise"):
        raise ValueError(f"background must be 'plain' or 'noise', not {background!r}")
    if not shapes:
        raise ValueError("need at least one shape")
    shapes = list(shapes)
    colors = list(fills) if fills is not None else [COLORS[s.color] for s in shapes]
    if len(colors) != len(shapes):
        raise ValueError("need one fill colour per shape")
    base = _background_base(colors, rng)

    if background == "plain":
        canvas = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    else:
        # blotchy low-frequency noise plus a little fine grain, mid-tone
        lo_h, lo_w = max(2, height // 12), max(2, width // 12)
        lo = (
            rng.normal(0.0, 18.0, size=(lo_h, lo_w, 1)) + rng.normal(0.0, 12.0, size=(lo_h, lo_w, 3))
        ).astype(np.float32)
        lo_img = Image.fromarray(np.clip(lo + 128, 0, 255).astype(np.uint8)).resize(
            (width, height), Image.BILINEAR
        )
        blotch = np.asarray(lo_img, np.float32) - 128
        grain = rng.normal(0.0, 7.0, size=(height, width, 3)).astype(np.float32)
        canvas = base + blotch + grain
    canvas = np.clip(canvas, 0, 255)

    # shapes live in the central square so a centre crop never cuts them off
    side = min(width, height)
    ox, oy = (width - side) / 2.0, (height - side) / 2.0
    ranges = _RADIUS[1 if len(shapes) == 1 else 2]
    placed: list[tuple[float, float, float]] = []
    for spec, col in zip(shapes, colors, strict=True):
        lo_r, hi_r = ranges[spec.size]
        r = rng.uniform(lo_r, hi_r) * side
        margin = r + 0.03 * side + 1
        for _attempt in range(60):
            cx = rng.uniform(margin, side - margin)
            cy = rng.uniform(margin, side - margin)
            if all(math.hypot(cx - px, cy - py) > r + pr + 1 for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        angle = math.radians(rng.uniform(-15.0, 15.0))
        mask = shape_mask(spec, ox + cx, oy + cy, r, angle, width, height)
        alpha = np.asarray(mask, np.float32)[..., None] / 255.0
        jitter = rng.uniform(-10, 10, size=3)
        fill = np.clip(np.asarray(col, np.float32) + jitter, 0, 255)
        canvas = canvas * (1.0 - alpha) + fill * alpha

    return Image.fromarray(np.round(canvas).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- captions

_TEMPLATES = (
    "{}",
    "a photo of {}",
    "a photo of {}.",
    "a picture of {}",
    "an image of {}",
    "a drawing of {}",
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(shapes: Sequence[ShapeSpec], rng: np.random.Generator) -> str:
    """Natural-language caption, e.g. ``"a small red circle"``,
    ``"a photo of a blue star"``, ``"a red circle and a green square"``."""
    if not shapes:
        raise ValueError("need at least one shape")
    with_size = bool(rng.random() < 0.5)
    parts = []
    for s in shapes:
        words = ([s.size] if with_size else []) + [s.color, s.shape]
        parts.append(_article(" ".join(words)))
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return template.format(" and ".join(parts))


# --------------------------------------------------------------------------- corpus


def stretched(rng: np.random.Generator, side: int, fraction: float) -> tuple[int, int]:
    """(width, height) of an image of base size ``side``: square, or, for a ``fraction`` of the
    draws, 1.2-1.6 times wider or taller (the shapes stay inside the central square)."""
    width = height = side
    if rng.random() < fraction:
        stretch = int(round(side * rng.uniform(1.2, 1.6)))
        if rng.random() < 0.5:
            width = stretch
        else:
            height = stretch
    return width, height
