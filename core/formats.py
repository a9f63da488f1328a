"""Formats beyond Pillow's own: HEIF/HEIC through pillow-heif, camera RAW through rawpy (LibRaw).

HEIF/HEIC: pillow-heif's opener is registered with Pillow once per process
(:func:`register_openers`), so these files are decoded like any other by
:func:`core.decode.decode_image`: the content decides (a HEIC named ``.jpg`` decodes) and the size
in the header is checked against the limits before any pixel is decoded. AVIF is Pillow's own
plugin (its wheels carry libavif since 11.3; the libheif inside pillow-heif 1.x has no AVIF decoder).

RAW (see :func:`is_raw`): a file is RAW when its content has a RAW signature (RAF, CR3, ORF, RW2,
CR2, or a TIFF whose first IFD has a DNGVersion tag) or its name has a RAW extension, since NEF,
ARW, PEF and others are plain TIFFs that Pillow would open as their small first-IFD thumbnail. What
LibRaw does not recognise at all (a JPEG named ``.nef``) is left to Pillow. :func:`read_raw` refuses
a RAW whose sensor size exceeds the limits before unpacking it, then takes the embedded JPEG preview
when it is at least as large as needed (the caller decodes it as any JPEG, with the same bounds),
else demosaics at half size with the camera's white balance.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone

import numpy as np

from core.errors import DecodeError

RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".avif"})
_RAW_SIGNATURES = (b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00")  # RAF, ORF, RW2
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
_DNG_VERSION_TAG = 50706
# LibRaw's flip (bit 4: transpose, 2: flip vertically, 1: flip horizontally) as an EXIF orientation
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


@dataclass(frozen=True)
class RawImage:
    """What a RAW file gives: its embedded JPEG ``preview`` (bytes, orientation not yet applied
    unless its own EXIF says so) or ``pixels`` ((H, W, 3) uint8, half size, upright); the upright
    full ``width`` and ``height``, the EXIF ``orientation`` (1..8) and the date ``taken`` (seconds
    since the epoch, the camera's wall clock read as UTC; None when not recorded)."""

    width: int
    height: int
    orientation: int
    taken: float | None
    preview: bytes | None = None
    pixels: np.ndarray | None = None


@functools.cache
def register_openers() -> None:
    """Register pillow-heif's HEIF/HEIC opener with Pillow (once per process)."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def has_raw_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in RAW_EXTENSIONS


def is_raw(data: bytes, name: str = "") -> bool:
    """Whether ``data`` (named ``name``, a path or URI, when known) is decoded as camera RAW."""
    if has_raw_extension(name) or data.startswith(_RAW_SIGNATURES) or data[4:12] == b"ftypcrx ":
        return True
    return data[:4] in _TIFF_SIGNATURES and (data[8:10] == b"CR" or _has_dng_version(data))


def _has_dng_version(data: bytes) -> bool:
    """Whether the first IFD of a TIFF has the DNGVersion tag."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return False
    offset = struct.unpack_from(order + "I", data, 4)[0]
    if offset + 2 > len(data):
        return False
    entries = data[offset + 2 : offset + 2 + 12 * struct.unpack_from(order + "H", data, offset)[0]]
    return any(
        struct.unpack_from(order + "H", entries, pos)[0] == _DNG_VERSION_TAG
        for pos in range(0, len(entries) - 11, 12)
    )


def read_raw(
    data: bytes,
    *,
    max_pixels: int,
    needed: int,
    preview_size: Callable[[bytes], tuple[int, int]],
) -> RawImage | None:
    """The preview or half-size pixels of the RAW file in ``data`` (see :class:`RawImage`), or None
    when LibRaw does not recognise the content. The preview is taken when its shorter side is at
    least ``needed`` (0: the image's own shorter side) and ``preview_size`` (JPEG bytes -> width,
    height from the header, raising :class:`DecodeError` for a JPEG refused by the bounds) accepts
    it. Raises :class:`DecodeError` for a corrupt or too large file.

    Memory: the pixel limit applies to the sensor size read on open; LibRaw then holds a mosaic's
    data at 2 bytes a pixel and the half-size demosaic at 2 more (4 x 16 bits per 2 x 2 block), the
    4 bytes a pixel that core.decode allows. A linear (3- or 4-sample) DNG takes 8 bytes a pixel,
    which LibRaw only reports after unpacking; its own allocation cap (2 GB) then bounds it."""
    import rawpy

    try:
        raw = rawpy.imread(io.BytesIO(data))
    except rawpy.LibRawFileUnsupportedError:
        return None
    except Exception as err:  # LibRawIOError, LibRawDataError... for a truncated or corrupt file
        raise DecodeError(f"corrupt RAW file ({type(err).__name__}: {_text(err)})") from err
    with raw:
        sizes = raw.sizes
        _check_size(sizes.raw_width, sizes.raw_height, max_pixels)
        orientation = _FLIP_TO_ORIENTATION.get(sizes.flip, 1)
        width, height = (sizes.height, sizes.width) if sizes.flip & 4 else (sizes.width, sizes.height)
        taken = _taken(raw)
        preview = _preview(raw, needed or min(width, height), max_pixels, preview_size)
        if preview is not None:
            return RawImage(width, height, orientation, taken, preview=preview)
        try:
            pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        except Exception as err:  # LibRaw's errors for data it cannot unpack or process
            raise DecodeError(f"corrupt RAW data ({type(err).__name__}: {_text(err)})") from err
    return RawImage(width, height, orientation, taken, pixels=pixels)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError(f"invalid RAW dimensions {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError(f"decompression bomb: RAW {width}x{height} exceeds {max_pixels} pixels")


def _preview(
    raw: object, needed: int, max_pixels: int, preview_size: Callable[[bytes], tuple[int, int]]
) -> bytes | None:
    """The embedded JPEG preview when it is large enough and within the limits, else None."""
    import rawpy

    try:
        thumb = raw.extract_thumb()  # type: ignore[attr-defined]
    except Exception:  # no preview, an unsupported kind, or a broken one: demosaic instead
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    try:
        width, height = preview_size(thumb.data)
    except DecodeError:  # a preview the JPEG bounds refuse: the sensor data may still be fine
        return None
    if min(width, height) < needed or width * height > max_pixels:
        return None
    return bytes(thumb.data)


def _taken(raw: object) -> float | None:
    try:
        moment = raw.other.timestamp  # type: ignore[attr-defined]
    except Exception:  # rawpy without ``other``, or no usable timestamp
        return None
    if moment is None or moment.year <= 1970:  # LibRaw's 0 for no date
        return None
    return moment.replace(tzinfo=timezone.utc).timestamp()


def _text(err: Exception) -> str:
    text = err.args[0] if err.args else ""
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text or type(err).__name__)
