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


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def scan_bomb_jpeg(width: int, height: int, extra_scans: int, before: bytes = b"") -> bytes:
    """A progressive JPEG (10 scans) with ``extra_scans`` empty scans spliced in before its EOI,
    after ``before``: copies of the header of its last scan (luma AC refinement) with no
    entropy-coded data. Every scan makes libjpeg walk every block of the image, so decoding
    time grows with scans x pixels."""
    smooth = _photo(width // 512 + 2, height // 512 + 2).resize((width, height), Image.Resampling.BILINEAR)
    data = _save(smooth, "JPEG", progressive=True, quality=50)  # 24 MP: ~200 KB
    last = data.rfind(b"\xff\xda")
    header = data[last : last + 2 + struct.unpack(">H", data[last + 2 : last + 4])[0]]
    eoi = data.rfind(b"\xff\xd9")
    return data[:eoi] + before + header * extra_scans + data[eoi:]


def set_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with the dimensions in its first SOF segment replaced (the scans are left as they are)."""
    sof = next(i for i in range(2, len(data) - 9) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def segment_bomb_jpeg(segments: int) -> bytes:
    """A small JPEG with ``segments`` empty COM segments after its SOI (Pillow parses each in Python)."""
    data = _save(_photo(), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def comment_bomb_gif(sub_blocks: int) -> bytes:
    """A small GIF whose first frame is preceded by one comment of ``sub_blocks`` 1-byte sub-blocks
    (Pillow concatenates them one at a time: quadratic)."""
    data = _save(_photo().convert("P"), "GIF")
    frame = data.index(b"\x2c\x00\x00\x00\x00")  # the first image descriptor, at (0, 0)
    return data[:frame] + b"\x21\xfe" + b"\x01c" * sub_blocks + b"\x00" + data[frame:]


def deflate_tiff(width: int, height: int, bits: tuple[int, ...]) -> bytes:
    """A little-endian RGB(A) TIFF of zeros, one deflate strip, ``bits`` per sample (8 or 16 each):
    16-bit samples decode through a strip buffer wider than Pillow's 4-byte RGBA."""
    samples = len(bits)
    strip = zlib.compress(b"\x00" * (width * height * sum(bits) // 8))
    bits_at, strip_at = 8, 16  # bits per sample (4 shorts at most), then the strip, then the IFD
    tags = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, samples, bits_at),
        (259, 3, 1, 8),
        (262, 3, 1, 2),
        (273, 4, 1, strip_at),
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, len(strip)),
        (284, 3, 1, 1),
    ] + ([(338, 3, 1, 2)] if samples == 4 else [])
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + b"\x00" * 4
    head = b"II*\x00" + struct.pack("<I", strip_at + len(strip))
    return head + struct.pack("<4H", *bits, *[0] * (4 - samples)) + strip + ifd


def sixteen_bit_png(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG, a horizontal ramp over the full 0..65535 range (compresses ~400:1)."""
    row = (np.arange(width, dtype=np.uint64) * 65535 // max(width - 1, 1)).astype(np.uint16)
    return _save(Image.fromarray(np.broadcast_to(row, (height, width)).copy()), "PNG")


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
        "bomb.png": (png_bomb(200_000, 200_000), "decode"),
        "scan-bomb.jpg": (scan_bomb_jpeg(64, 48, 500), "decode"),
        "comment-bomb.gif": (comment_bomb_gif(5000), "decode"),
        "progressive.jpg": (scan_bomb_jpeg(64, 48, 0), "index"),
        "random-bytes.webp": (np.random.default_rng(9).bytes(4096), "decode"),
        "png-called.jpg": (png, "index"),
        "jpeg-called.png": (jpeg, "index"),
        "animated.gif": (_animated("GIF"), "index"),
        "animated.webp": (_animated("WEBP"), "index"),
        "cmyk.jpg": (_save(_photo(seed=4).convert("CMYK"), "JPEG"), "index"),
        "sixteen-bit.png": (
            _save(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)), "PNG"),
            "index",
        ),
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
