"""A generated archive of hostile files, each with what vistag must do with it.

``make_hostile(root)`` writes the files and returns (path, expectation) pairs: ``"index"`` for
files that are awkward but valid images, or the failure stage (``"decode"``, ``"read"``) for
files that must be recorded as failures with a reason.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _photo(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


def _animated(fmt: str) -> bytes:
    frames = [_photo(seed=i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return _save(_photo(80, 30), "JPEG", exif=exif.tobytes())


def hostile_files() -> dict[str, tuple[bytes, str]]:
    """File name -> (content, expectation)."""
    jpeg, png = _save(_photo(seed=1), "JPEG"), _save(_photo(seed=2), "PNG")
    palette = _photo(seed=3).convert("P")
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "decode"),
        "truncated.png": (png[: len(png) // 2], "decode"),
        "zero-bytes.jpg": (b"", "decode"),
        "page.jpg": (b"<!doctype html><html><body>not an image</body></html>", "decode"),
        "notes.png": (b"plain text in a png file\n" * 20, "decode"),
        "bomb.png": (_png_bomb(200_000, 200_000), "decode"),
        "random-bytes.webp": (np.random.default_rng(9).bytes(4096), "decode"),
        "png-called.jpg": (png, "index"),
        "jpeg-called.png": (jpeg, "index"),
        "animated.gif": (_animated("GIF"), "index"),
        "animated.webp": (_animated("WEBP"), "index"),
        "cmyk.jpg": (_save(_photo(seed=4).convert("CMYK"), "JPEG"), "index"),
        "sixteen-bit.png": (_save(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)), "PNG"), "index"),
        "palette-alpha.png": (_save(palette, "PNG", transparency=0), "index"),
        "la.png": (_save(_photo(seed=5).convert("LA"), "PNG"), "index"),
        "exif-rotated.jpg": (_exif_rotated(), "index"),
        "very-wide.png": (_save(_photo(4000, 4, seed=6), "PNG"), "index"),
        "very-tall.png": (_save(_photo(3, 3000, seed=7), "PNG"), "index"),
        "one-pixel.png": (_save(_photo(1, 1, seed=8), "PNG"), "index"),
        "spaces and ünïcödé 猫 .jpg": (_save(_photo(seed=10), "JPEG"), "index"),
        "new\nline.png": (_save(_photo(seed=11), "PNG"), "index"),
        "quote'\"; DROP TABLE images;--.png": (_save(_photo(seed=12), "PNG"), "index"),
        ("x" * 240) + ".jpg": (_save(_photo(seed=13), "JPEG"), "index"),
    }


def make_hostile(root: Path) -> list[tuple[Path, str]]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name, (data, expect) in hostile_files().items():
        path = root / name
        path.write_bytes(data)
        out.append((path, expect))
    return out
