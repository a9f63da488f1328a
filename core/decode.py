"""Decode image bytes into an RGB Pillow image, with explicit rules for every awkward input.

Rules: content decides the format (extensions may lie; RAW files, many of them TIFFs, are also
told by extension: see :mod:`core.formats`); the first frame of animations and multi-page files;
EXIF orientation applied; every mode converted to RGB (alpha composited on white, 16-bit and float
scaled, CMYK and palette converted); a pixel limit decided here, not by Pillow's global warning;
extreme aspect ratios centre-cropped to at most ``MAX_ASPECT`` (the model centre-crops a square
anyway, and this bounds the memory of the resize).

Work and memory per image are bounded, whatever the file size (figures: 2-core machine, Pillow
12.3 with libjpeg-turbo; ``bench/bench_decode_bounds.py`` measures them):

- bytes: the decoded buffers may take at most ``BYTES_PER_PIXEL_LIMIT`` x ``max_pixels`` bytes,
  checked from the header. Pillow stores every mode in 1, 2 or 4 bytes a pixel, so an image
  within the pixel limit passes unless its file's samples are wider (a 16-bit RGB or RGBA TIFF,
  6 or 8 bytes a pixel, is decoded through a strip buffer of that width).
- JPEG scans: each scan walks every block of the image (an empty one ~70 ps a pixel), so a
  progressive JPEG padded with empty scans costs scans x pixels (20,000 scans, 200 KB, on 24 MP:
  36 s). The scans and other marker segments of the first image are counted before Pillow
  parses anything (see :func:`_check_jpeg`); Pillow parses header segments in Python (5 million
  empty comments, 20 MB: 3.8 s).
- GIF comments: Pillow joins comment sub-blocks by repeated concatenation (quadratic: 1 million
  1-byte sub-blocks, 2 MB, took 45 s), so the extension sub-blocks before the first frame are
  counted (see :func:`_check_gif`).
- conversion: 16-bit, 32-bit and float images are scaled to 8 bits in row strips (a 40 MP
  16-bit PNG peaked at 1025 MB through float64, now 223 MB), and with a ``draft_size`` every
  image is first reduced by an integer factor, so nothing converts pixels the caller drops.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from PIL import Image, ImageOps

from core import formats
from core.errors import DecodeError

DEFAULT_MAX_PIXELS = 128_000_000
MIN_FILE_BYTES_LIMIT = 256 * 2**20  # files up to this size are read whatever the pixel limit


def max_file_bytes(max_pixels: int) -> int:
    """The largest file read for decoding: no image within the pixel and byte limits (4 bytes a
    pixel at most) needs more, so a larger file is refused unread instead of filling memory."""
    return max(MIN_FILE_BYTES_LIMIT, 4 * max_pixels)


MAX_ASPECT = 4.0
BYTES_PER_PIXEL_LIMIT = 4  # the widest Pillow mode (RGB/RGBA/I/F): the byte limit never refuses what they fit
MAX_JPEG_SCANS = 100  # 10x libjpeg's default progressive script; libjpeg-turbo suggests 500 as a cap
MIN_JPEG_SCANS = 32  # allowed at any size
JPEG_SCAN_PIXELS = 4_000_000_000  # scans x pixels: 100 scans up to 40 MP, fewer above (~0.3 s of empty scans)
MAX_JPEG_SEGMENTS = 2000  # marker segments other than scans; real files have < 300 (ICC in 255 chunks)
MAX_GIF_COMMENT_BLOCKS = 1024  # comment sub-blocks before the first frame: 256 KB of text
MAX_GIF_BLOCKS = 65536  # extension sub-blocks before the first frame
STRIP_PIXELS = 1 << 20  # pixels converted at a time: 8 MB of float64
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_TRANSPOSE = {  # an EXIF orientation's undoing, as ImageOps.exif_transpose does it
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_REDUCIBLE = {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "I", "F"}
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # not byte stuffing, a restart or fill
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image ready for the model transform, and the original's upright size in pixels."""

    image: Image.Image
    width: int
    height: int
    format: str
    taken: float | None = None  # EXIF DateTimeOriginal, seconds since the epoch (see :func:`date_taken`)
    orientation: int = 1  # the EXIF orientation (1..8) applied to ``image``


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int = 0, name: str = ""
) -> DecodedImage:
    """Decode ``data``; raise :class:`DecodeError` when it is empty, corrupt, too large or no image.

    ``draft_size`` > 0 lets decoding scale down while keeping both sides >= draft_size: JPEG
    decodes at a reduced scale, and any image is then reduced by an integer factor. ``name`` (a
    path or URI) is only used to tell RAW files (see :func:`core.formats.is_raw`).
    """
    if not data:
        raise DecodeError("empty file")
    if formats.is_raw(data, name):
        raw = formats.read_raw(data, max_pixels=max_pixels, needed=draft_size, preview_size=_jpeg_size)
        if raw is not None:
            return _from_raw(raw, max_pixels, draft_size)
    if data[:3] == b"\xff\xd8\xff":
        _check_jpeg(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        _check_gif(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = _open(data, max_pixels)
        width, height = img.size
        fmt = img.format or "unknown"
        taken = date_taken(img)
        orientation = _orientation(img)
        if orientation in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        if draft_size and fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
            img.draft(img.mode, (draft_size, draft_size))
        try:
            img.seek(0)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: the default copies every image
        except Exception as err:
            raise DecodeError(f"truncated or corrupt image data ({type(err).__name__}: {err})") from err
    img = shrink(img, draft_size)  # drops the full-size image before the RGB copy
    return DecodedImage(crop_aspect(to_rgb(img), MAX_ASPECT), width, height, fmt, taken, orientation)


def _from_raw(raw: formats.RawImage, max_pixels: int, draft_size: int) -> DecodedImage:
    """The decoded image of a RAW file: its preview decoded as any JPEG, turned upright by the
    RAW's orientation unless the preview's own EXIF did it, or its half-size pixels reduced."""
    if raw.preview is not None:
        shown = decode_image(raw.preview, max_pixels=max_pixels, draft_size=draft_size)
        image = shown.image
        if shown.orientation == 1 and raw.orientation in _TRANSPOSE:
            image = image.transpose(_TRANSPOSE[raw.orientation])
    else:
        image = crop_aspect(shrink(Image.fromarray(raw.pixels), draft_size), MAX_ASPECT)
    return DecodedImage(image, raw.width, raw.height, "RAW", raw.taken, raw.orientation)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG as coded, after the scan and segment checks of decoding."""
    if data[:3] != b"\xff\xd8\xff":
        raise DecodeError("not a JPEG")
    header = _check_jpeg(data)
    return header.width, header.height


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The opened (header-only) image, refused when its pixels or decoded bytes exceed the limits."""
    formats.register_openers()
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
    size, limit = width * height * decoded_bytes_per_pixel(img), BYTES_PER_PIXEL_LIMIT * max_pixels
    if size > limit:
        raise DecodeError(
            f"decompression bomb: {width}x{height} {img.mode} decodes to {size} bytes, over {limit}"
        )
    return img


def decoded_bytes_per_pixel(img: Image.Image) -> int:
    """Bytes a pixel of the widest buffer ``img`` decodes through: Pillow's storage of its mode
    (1, 2 or 4), or a TIFF's samples when wider (libtiff decodes a strip at the file's width)."""
    stored = 1 if img.mode in ("1", "L", "P") else 2 if img.mode.startswith("I;16") else 4
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return stored
    try:
        bits = tags.get(258, (8,))
        bits = (bits,) if isinstance(bits, int) else tuple(bits)
        total = bits[0] * int(tags.get(277, 1)) if len(bits) == 1 else sum(bits)
    except Exception:  # a malformed tag: Pillow's own decoding will fail or ignore it
        return stored
    return max(stored, math.ceil(total / 8))


@dataclass
class JpegHeader:
    """What the frame header and APP14 segment of a JPEG's first image say: the SOF ``marker``
    (0xC0 baseline ... 0xCF), sample ``bits``, component ``ids`` and ``sampling`` (h, v) factors,
    ``height`` and ``width`` as coded, and the Adobe colour ``transform`` (None without APP14)."""

    marker: int = 0
    bits: int = 0
    height: int = 0
    width: int = 0
    ids: tuple[int, ...] = ()
    sampling: tuple[tuple[int, int], ...] = ()
    transform: int | None = None


def jpeg_header(data: bytes) -> JpegHeader:
    """The header of a JPEG's first image, after the same scan and segment checks as decoding
    (:class:`DecodeError` when they refuse it); ``marker`` 0 when no frame header was found."""
    return _check_jpeg(data)


def _check_jpeg(data: bytes) -> JpegHeader:
    """Raise :class:`DecodeError` when the first image of a JPEG has too many scans or segments;
    else return its header (see :class:`JpegHeader`).

    Walks the marker segments as libjpeg does: lengths skip segments, and scan data is skipped to
    the next marker (0xFF in scan data is always followed by 0x00 or a restart marker). Stops at
    the first EOI: an MPO's further frames are never decoded.
    """
    pos, scans, segments, header = 2, 0, 0, JpegHeader()
    while (found := _JPEG_MARKER.search(data, pos)) is not None:
        marker, pos = data[found.start() + 1], found.end()
        if marker == 0xD9:
            return header
        if marker == 0x01 or pos + 2 > len(data):  # TEM: no length
            continue
        if marker == 0xDA:
            scans += 1
            pixels = header.height * header.width
            if scans > (limit := _jpeg_scan_limit(pixels)):
                raise DecodeError(f"too many JPEG scans: over {limit} for {pixels} pixels (normal: about 10)")
        else:
            segments += 1
            if segments > MAX_JPEG_SEGMENTS:
                raise DecodeError(f"too many JPEG marker segments: over {MAX_JPEG_SEGMENTS}")
            _note_segment(header, marker, data, pos)
        pos += max(int.from_bytes(data[pos : pos + 2], "big"), 2)
    return header


def _note_segment(header: JpegHeader, marker: int, data: bytes, pos: int) -> None:
    """Record the first frame header (SOF) and an Adobe APP14 segment starting at ``pos`` (its length)."""
    if marker in _JPEG_SOF and not header.height * header.width and pos + 7 <= len(data):
        header.marker, header.bits = marker, data[pos + 2]
        header.height, header.width = struct.unpack_from(">HH", data, pos + 3)
        count = data[pos + 7] if pos + 8 <= len(data) else 0
        parts = data[pos + 8 : pos + 8 + 3 * count]
        if count and len(parts) == 3 * count:
            header.ids = tuple(parts[0::3])
            header.sampling = tuple((b >> 4, b & 15) for b in parts[1::3])
    elif marker == 0xEE and data[pos + 2 : pos + 7] == b"Adobe" and pos + 14 <= len(data):
        header.transform = data[pos + 13]


def _jpeg_scan_limit(pixels: int) -> int:
    """Scans allowed in a JPEG of ``pixels`` coded pixels: each scan walks all of them."""
    return min(MAX_JPEG_SCANS, max(MIN_JPEG_SCANS, JPEG_SCAN_PIXELS // max(pixels, 1)))


def _check_gif(data: bytes) -> None:
    """Raise :class:`DecodeError` when the extensions before a GIF's first frame have too many
    sub-blocks (Pillow reads them all before decoding the frame)."""
    pos = 13 + (3 << ((data[10] & 7) + 1) if len(data) > 10 and data[10] & 0x80 else 0)
    blocks = comments = 0
    while pos + 1 < len(data) and data[pos] == 0x21:  # an extension: label, sub-blocks, terminator
        is_comment = data[pos + 1] == 0xFE
        pos += 2
        while True:
            blocks += 1
            comments += is_comment
            if blocks > MAX_GIF_BLOCKS or comments > MAX_GIF_COMMENT_BLOCKS:
                kind = "comment" if comments > MAX_GIF_COMMENT_BLOCKS else "extension"
                raise DecodeError(f"too many GIF {kind} sub-blocks before the first frame")
            if pos >= len(data) or not data[pos]:
                break
            pos += data[pos] + 1
        pos += 1


def date_taken(img: Image.Image) -> float | None:
    """When the photo was taken: EXIF ``DateTimeOriginal`` (else ``DateTime``) as seconds since the
    epoch, with ``OffsetTimeOriginal`` applied when the camera recorded it (else read as UTC);
    None without a usable date. Read through Pillow's EXIF support from the opened header."""
    try:
        exif = img.getexif()
        sub = exif.get_ifd(0x8769)
        text, offset = sub.get(0x9003) or exif.get(0x0132), sub.get(0x9011)
        if not text:
            return None
        moment = datetime.strptime(str(text).strip().strip("\x00")[:19], "%Y:%m:%d %H:%M:%S")
        zone = timezone.utc
        if offset and re.fullmatch(r"[+-]\d{2}:\d{2}", str(offset).strip()):
            sign = -1 if str(offset).strip()[0] == "-" else 1
            hours, minutes = map(int, str(offset).strip()[1:].split(":"))
            zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
        return moment.replace(tzinfo=zone).timestamp()
    except Exception:  # a missing, partial or garbled date is no date
        return None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def shrink(img: Image.Image, draft_size: int) -> Image.Image:
    """``img`` box-reduced by an integer factor that keeps both sides >= ``draft_size`` (0: no
    reduction; edge rows and columns short of a whole block are dropped), with 16-bit, 32-bit
    and float modes scaled to 8-bit ``L``."""
    factor = max(1, min(img.size) // draft_size) if draft_size > 0 else 1
    whole = (0, 0, img.width // factor * factor, img.height // factor * factor)  # whole blocks only
    if _is_high_depth(img.mode):
        rule = _scale_rule(img)  # from the full image, as without reduction
        if factor >= 2:
            img = _reduce_i16(img, factor) if img.mode.startswith("I;16") else img.reduce(factor, whole)
        return _to_l(img, rule)
    if factor < 2:
        return img
    return (img if img.mode in _REDUCIBLE else to_rgb(img)).reduce(factor, whole)


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
    if _is_high_depth(mode):
        return _to_l(img, _scale_rule(img)).convert("RGB")
    return img.convert("RGB")


def _is_high_depth(mode: str) -> bool:
    return mode.startswith("I") or mode == "F"


def _scale_rule(img: Image.Image) -> str:
    """How :func:`_to_l` maps ``img``'s values to 0..255: ``"div257"`` (16-bit range), ``"clip"``,
    ``"mul255"`` (floats in 0..1) or ``"float"`` (floats clipped)."""
    if img.mode.startswith("I;16"):
        return "div257"
    if img.mode.startswith("I"):
        return "div257" if img.getextrema()[1] > 255 else "clip"
    peak = 0.0
    for _, strip in _strips(img):
        strip_peak = float(strip.max(initial=0))
        if math.isnan(strip_peak):  # NaN anywhere: no 0..1 scaling, as before
            return "float"
        peak = max(peak, strip_peak)
    return "mul255" if peak <= 1.0 else "float"


def _strips(img: Image.Image) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """((top, left), array of rows x columns) for consecutive pieces of at most ``STRIP_PIXELS``
    pixels: whole rows, or parts of one row when a row is longer."""
    width, height = img.size
    rows, cols = max(1, STRIP_PIXELS // width), min(width, STRIP_PIXELS)
    for top in range(0, height, rows):
        for left in range(0, width, cols):
            box = (left, top, min(width, left + cols), min(height, top + rows))
            yield (top, left), np.asarray(img.crop(box))


def _to_l(img: Image.Image, rule: str) -> Image.Image:
    """An ``L`` image of ``img``'s values mapped by ``rule`` (see :func:`_scale_rule`), one strip
    at a time: the same levels as a float64 conversion of the whole image."""
    out = np.empty((img.height, img.width), np.uint8)
    for (top, left), strip in _strips(img):
        if rule == "div257":
            levels = np.clip(strip, 0, 65535) // 257
        elif rule == "clip":
            levels = np.clip(strip, 0, 255)
        else:
            levels = strip.astype(np.float64) * (255.0 if rule == "mul255" else 1.0)
            np.clip(np.nan_to_num(levels, copy=False), 0, 255, out=levels)
        out[top : top + strip.shape[0], left : left + strip.shape[1]] = levels
    return Image.fromarray(out)


def _reduce_i16(img: Image.Image, factor: int) -> Image.Image:
    """A 16-bit image box-averaged over whole ``factor`` x ``factor`` blocks (Pillow's
    ``reduce`` refuses 16-bit modes)."""
    width, height = img.width // factor, img.height // factor
    out = np.empty((height, width), np.uint16)
    rows = max(1, STRIP_PIXELS // (img.width * factor))
    for top in range(0, height, rows):
        n = min(rows, height - top)
        block = np.asarray(img.crop((0, top * factor, width * factor, (top + n) * factor)))
        sums = block.reshape(n, factor, width, factor).sum(axis=(1, 3), dtype=np.uint64)
        out[top : top + n] = (sums + factor * factor // 2) // (factor * factor)
    return Image.fromarray(out)


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
