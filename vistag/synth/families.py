"""Photo-like pictures with planted duplicate families, for tests and benchmarks of duplicate finding.

Each distinct picture is a smooth random scene (a few colour fields at low resolution, enlarged,
with shapes and grain, so that distinct pictures differ in their coarse structure as photos do),
saved as a JPEG with a date taken. A family is a picture and its variants, the alterations
people's archives are full of: an identical copy, a re-encode at quality 35, half size, a PNG
re-save, +15% brightness, a 5% crop, and the same pixels rotated by EXIF orientation.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

VARIANTS = ("copy", "q35", "half", "png", "bright", "crop5", "exif-rotated")


def photo(seed: int, size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A photo-like RGB picture, different in its coarse structure for every ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = (rng.random((rng.integers(3, 7), rng.integers(3, 7), 3)) * 255).astype(np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 6)):
        x, y = rng.integers(0, w), rng.integers(0, h)
        r = int(rng.integers(h // 10, h // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=colour)
    grain = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + grain, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, quality: int = 92, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **({"exif": exif.tobytes()} if exif is not None else {}))
    return buf.getvalue()


def _exif(taken: str, orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x9003] = taken
    return exif


def variant(img: Image.Image, kind: str, taken: str) -> tuple[str, bytes]:
    """(file suffix, bytes) of ``img`` altered as ``kind`` (one of :data:`VARIANTS`)."""
    w, h = img.size
    if kind == "copy":
        return ".jpg", _jpeg(img, exif=_exif(taken))
    if kind == "q35":
        return ".jpg", _jpeg(img, 35, _exif(taken))
    if kind == "half":
        return ".jpg", _jpeg(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), exif=_exif(taken))
    if kind == "png":
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return ".png", buf.getvalue()
    if kind == "bright":
        return ".jpg", _jpeg(ImageEnhance.Brightness(img).enhance(1.15), exif=_exif(taken))
    if kind == "crop5":
        dx, dy = w * 5 // 200, h * 5 // 200
        return ".jpg", _jpeg(img.crop((dx, dy, w - dx, h - dy)), exif=_exif(taken))
    if kind == "exif-rotated":  # stored turned, with the orientation that turns it back upright
        return ".jpg", _jpeg(img.transpose(Image.Transpose.ROTATE_90), exif=_exif(taken, orientation=6))
    raise ValueError(f"unknown variant {kind!r}")


def make_families(
    root: Path, distinct: int, families: int, seed: int = 0, variants: tuple[str, ...] = VARIANTS
) -> Iterator[tuple[str, str, str]]:
    """Write ``distinct`` pictures into ``root`` (the first ``families`` of them with every variant)
    and yield (original file, variant file, variant kind) for each planted pair."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(distinct):
        img = photo(seed * 100_003 + n)
        taken = f"2021:06:{1 + n % 28:02d} {n % 24:02d}:{n % 60:02d}:00"
        original = root / f"photo-{n:05d}.jpg"
        original.write_bytes(_jpeg(img, exif=_exif(taken)))
        if n >= families:
            continue
        for kind in variants:
            suffix, data = variant(img, kind, taken)
            path = root / f"photo-{n:05d}-{kind}{suffix}"
            path.write_bytes(data)
            yield str(original), str(path), kind
