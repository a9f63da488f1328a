"""Drawing images and writing corpora of generated shapes in any renderer style: the ``classic``
renderer of :mod:`vistag.synth.shapes` or a style of :mod:`vistag.synth.styles`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vistag.synth.shapes import ShapeSpec, _render, random_spec, stretched
from vistag.synth.styles import check_style, jpeg_quality, render

__all__ = ["draw", "make_corpus"]


def draw(
    shapes: Sequence[ShapeSpec],
    *,
    image_size: int = 96,
    background: str = "plain",
    rng: np.random.Generator,
    style: str = "classic",
) -> Image.Image:
    """Draw ``shapes`` on a square RGB image of ``image_size`` pixels.

    Positions, exact sizes, small rotations and slight colour jitter are drawn
    from ``rng``.  ``background`` is ``"plain"`` (a grey-ish tint that always
    differs clearly from the shape colours, so white and black stay visible) or
    ``"noise"`` (blotchy mid-tone noise).  ``style`` is one of
    :data:`vistag.synth.styles.STYLES`; ``"classic"`` is the renderer described
    here, the other styles draw their own backgrounds and ignore ``background``.
    """
    check_style(style)
    if style != "classic":
        return render(shapes, style=style, width=image_size, height=image_size, rng=rng)
    return _render(shapes, width=image_size, height=image_size, background=background, rng=rng)


def make_corpus(
    directory,
    n: int,
    *,
    seed: int = 0,
    formats: Sequence[str] = ("jpg", "png"),
    image_sizes: Sequence[int] = (64, 96, 160),
    two_shape_fraction: float = 0.0,
    combos: Iterable[tuple[str, str]] | None = None,
    style: str = "classic",
) -> list[tuple[Path, ShapeSpec]]:
    """Write ``n`` images to ``directory`` and return ``[(path, primary_spec), ...]``.

    File names are ``shape_00000.<fmt>`` ... (deterministic); formats are mixed
    (``"jpg"``/``"jpeg"`` -> JPEG, ``"png"`` -> PNG, anything else PIL knows by
    extension), base sizes come from ``image_sizes`` and about a quarter of the
    images are non-square (extra background left/right or top/bottom; the
    shapes stay inside the central square).  With ``two_shape_fraction`` > 0
    some images contain a second, different shape; the returned spec is always
    the first one.  ``combos`` restricts the (colour, shape) pairs used.
    ``style`` is a renderer of :data:`vistag.synth.styles.STYLES` (``"classic"``
    by default; the same seed gives the same files as before styles existed).
    """
    check_style(style)
    if not formats:
        raise ValueError("formats is empty")
    if not image_sizes:
        raise ValueError("image_sizes is empty")
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = sorted(set(combos)) if combos is not None else None
    rng = np.random.default_rng(seed)
    result: list[tuple[Path, ShapeSpec]] = []
    for i in range(n):
        fmt = str(formats[int(rng.integers(len(formats)))]).lower().lstrip(".")
        side = int(image_sizes[int(rng.integers(len(image_sizes)))])
        width, height = stretched(rng, side, 0.25)
        specs = [random_spec(rng, pool)]
        if two_shape_fraction > 0 and rng.random() < two_shape_fraction:
            while True:
                other = random_spec(rng, pool)
                if (other.color, other.shape) != (specs[0].color, specs[0].shape):
                    break
                if pool is not None and len(pool) < 2:
                    break
            specs.append(other)
        if style == "classic":
            background = "noise" if rng.random() < 0.3 else "plain"
            img = _render(specs, width=width, height=height, background=background, rng=rng)
        else:
            img = render(specs, style=style, width=width, height=height, rng=rng)
        path = out_dir / f"shape_{i:05d}.{fmt}"
        if fmt in ("jpg", "jpeg"):
            img.save(path, format="JPEG", quality=jpeg_quality(style, rng))
        elif fmt == "png":
            img.save(path, format="PNG")
        else:
            img.save(path)
        result.append((path, specs[0]))
    return result
