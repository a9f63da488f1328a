"""Decode rules: every mode to RGB, EXIF orientation, bombs, truncation, lies about format."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import DecodeError, crop_aspect, decode_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_jpeg_and_reported_size():
    out = decode_image(encode(Image.new("RGB", (80, 50), (200, 10, 10)), "JPEG"))
    assert out.image.mode == "RGB" and (out.width, out.height) == (80, 50) and out.format == "JPEG"


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "P", "I;16", "I", "F", "LA", "RGBA"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new(mode, (20, 10))
    fmt = "TIFF" if mode in ("F", "CMYK", "I") else "PNG"
    out = decode_image(encode(img, fmt))
    assert out.image.mode == "RGB" and out.image.size == (20, 10)


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.full((8, 8), 40000, dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(arr), "PNG"))
    value = np.asarray(out.image)[0, 0, 0]
    assert 150 <= value <= 160  # 40000 / 257 = 155.6


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert tuple(np.asarray(decode_image(encode(img, "PNG")).image)[0, 0]) == (255, 255, 255)


def test_palette_with_transparency():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    data = encode(img, "PNG", transparency=0)
    assert tuple(np.asarray(decode_image(data).image)[0, 0]) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.image.size == (20, 60) and (out.width, out.height) == (20, 60)


def test_extension_lies_do_not_matter():
    png = encode(Image.new("RGB", (10, 10)), "PNG")
    assert decode_image(png).format == "PNG"  # the caller may have called it .jpg


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(decode_image(buf.getvalue()).image)
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"<html>hello</html>", "not a recognised image"),
        (encode(Image.effect_noise((100, 100), 50).convert("RGB"), "JPEG")[:1500], "truncated"),
    ],
)
def test_bad_bytes_raise_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_decompression_bomb_limit_is_explicit():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, max_pixels=10_000_000).width == 3000


def test_extreme_aspect_ratio_is_cropped():
    out = decode_image(encode(Image.new("RGB", (4000, 10)), "PNG"))
    assert out.image.size == (40, 10) and (out.width, out.height) == (4000, 10)
    assert crop_aspect(Image.new("RGB", (10, 15)), 4.0).size == (10, 15)


def test_jpeg_draft_keeps_enough_resolution():
    big = encode(Image.new("RGB", (2000, 1000)), "JPEG")
    out = decode_image(big, draft_size=224)
    assert min(out.image.size) >= 224 and out.width == 2000
