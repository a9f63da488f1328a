"""Decode image bytes into an RGB Pillow image, with explicit rules for every awkward input.

Rules: content decides the format (extensions may lie); the first frame of animations; EXIF
orientation applied; every mode converted to RGB (alpha composited on white, 16-bit and float
scaled, CMYK and palette converted); a pixel limit decided here, not by Pillow's global warning;
extreme aspect ratios centre-cropped to at most ``MAX_ASPECT`` (the model centre-crops a square
anyway, and this bounds the memory of the resize).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 128_000_000
MAX_ASPECT = 4.0
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


class DecodeError(Exception):
    """The bytes are not a usable image; ``reason`` is a short human-readable cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image ready for the model transform, and the original's upright size in pixels."""

    image: Image.Image
    width: int
    height: int
    format: str


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int = 0) -> DecodedImage:
    """Decode ``data``; raise :class:`DecodeError` when it is empty, corrupt, too large or no image.

    ``draft_size`` > 0 lets JPEG decoding scale down while keeping both sides >= draft_size.
    """
    if not data:
        raise DecodeError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise DecodeError(f"decompression bomb: {err}") from err
        except Exception as err:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError...
            raise DecodeError(f"not a recognised image ({type(err).__name__})") from err
        width, height = img.size
        if width <= 0 or height <= 0:
            raise DecodeError(f"invalid dimensions {width}x{height}")
        if width * height > max_pixels:
            raise DecodeError(f"decompression bomb: {width}x{height} exceeds {max_pixels} pixels")
        fmt = img.format or "unknown"
        orientation = _orientation(img)
        if orientation in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        if draft_size and fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
            img.draft(img.mode, (draft_size, draft_size))
        try:
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
        except Exception as err:
            raise DecodeError(f"truncated or corrupt image data ({type(err).__name__}: {err})") from err
    rgb = to_rgb(img)
    return DecodedImage(crop_aspect(rgb, MAX_ASPECT), width, height, fmt)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(img)
    return img.convert("RGB")


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[..., :3]
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr / 257.0
    elif img.mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
    gray = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def crop_aspect(img: Image.Image, max_aspect: float) -> Image.Image:
    """Centre-crop the long side so that long/short <= max_aspect."""
    w, h = img.size
    if max(w, h) <= max_aspect * min(w, h):
        return img
    if w > h:
        new_w = int(h * max_aspect)
        left = (w - new_w) // 2
        return img.crop((left, 0, left + new_w, h))
    new_h = int(w * max_aspect)
    top = (h - new_h) // 2
    return img.crop((0, top, w, top + new_h))
