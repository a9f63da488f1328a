"""Camera RAW files for tests and benchmarks: DNGs written with pidng (a dev dependency), with an
embedded JPEG preview chained on as cameras write one."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

XYZ_TO_LINEAR_SRGB = [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]


def dng(rgb: np.ndarray, orientation: int = 1) -> bytes:
    """A DNG of ``rgb`` as a 12-bit RGGB mosaic, with sRGB primaries and a neutral white balance."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, PhotometricInterpretation

    height, width, _ = rgb.shape
    levels = rgb.astype(np.uint16) * 16
    mosaic = np.empty((height, width), np.uint16)
    mosaic[0::2, 0::2], mosaic[1::2, 1::2] = levels[0::2, 0::2, 0], levels[1::2, 1::2, 2]
    mosaic[0::2, 1::2], mosaic[1::2, 0::2] = levels[0::2, 1::2, 1], levels[1::2, 0::2, 1]
    tags = DNGTags()
    for tag, value in [
        (Tag.ImageWidth, width), (Tag.ImageLength, height), (Tag.TileWidth, width), (Tag.TileLength, height),
        (Tag.Orientation, orientation), (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16),
        (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB),
        (Tag.BlackLevel, 0), (Tag.WhiteLevel, 4095), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.ColorMatrix1, [[round(x * 10000), 10000] for row in XYZ_TO_LINEAR_SRGB for x in row]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.Make, "vistag"), (Tag.Model, "test"),
    ]:  # fmt: skip
        tags.set(tag, value)
    writer = RAW2DNG()
    writer.options(tags, path="", compress=False)
    return bytes(writer.convert(mosaic))


def with_preview(data: bytes, jpeg: bytes) -> bytes:
    """``data`` (a little-endian TIFF of one IFD) with a second IFD chained after the first: a
    JPEG preview (NewSubfileType 1) as cameras write one (pidng writes no preview)."""
    width, height = Image.open(io.BytesIO(jpeg)).size
    buf = bytearray(data) + bytes(-len(data) % 4)
    first = struct.unpack_from("<I", buf, 4)[0]
    next_at = first + 2 + 12 * struct.unpack_from("<H", buf, first)[0]
    jpeg_at = len(buf)
    buf += jpeg + bytes(-len(jpeg) % 4)
    struct.pack_into("<I", buf, next_at, len(buf))
    entries = [(254, 4, 1), (256, 4, width), (257, 4, height), (259, 3, 6), (262, 3, 6), (277, 3, 3)]
    entries += [(513, 4, jpeg_at), (514, 4, len(jpeg))]  # JPEGInterchangeFormat and its length
    buf += struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        buf += struct.pack("<HHII", tag, kind, 1, value)
    return bytes(buf + struct.pack("<I", 0))
