"""Decode rules: every mode to RGB, EXIF orientation, bombs, truncation, lies about format."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import decode
from core.decode import (
    MAX_GIF_COMMENT_BLOCKS,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    DecodeError,
    crop_aspect,
    decode_image,
    to_rgb,
)
from vistag.synth.hostile import (
    comment_bomb_gif,
    deflate_tiff,
    scan_bomb_jpeg,
    segment_bomb_jpeg,
    set_jpeg_size,
    sixteen_bit_png,
)


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


def test_jpeg_scans_are_limited_before_decoding():
    assert scan_bomb_jpeg(64, 48, 0).count(b"\xff\xda") == 10
    assert decode_image(scan_bomb_jpeg(64, 48, MAX_JPEG_SCANS - 10)).width == 64  # exactly at the limit
    with pytest.raises(DecodeError, match="too many JPEG scans: over 100"):
        decode_image(scan_bomb_jpeg(64, 48, MAX_JPEG_SCANS - 9))
    with pytest.raises(DecodeError, match="scans"):
        decode_image(scan_bomb_jpeg(64, 48, 20_000), draft_size=32)


def test_jpeg_scan_limit_shrinks_with_pixels():
    """100 MP: 4e9 scan-pixels allow 40 scans; refused from the header, nothing is decoded."""
    with pytest.raises(DecodeError, match="over 40 for 100000000 pixels"):
        decode_image(set_jpeg_size(scan_bomb_jpeg(64, 48, 31), 10_000, 10_000))


def test_jpeg_scans_counted_like_libjpeg():
    com = b"\xff\xfe" + struct.pack(">H", 2 + 400) + b"\xff\xda\xff\xd9" * 100  # markers inside a comment
    plain = scan_bomb_jpeg(64, 48, 0)
    assert decode_image(plain[:2] + com + plain[2:]).width == 64  # skipped by its length
    assert decode_image(plain + scan_bomb_jpeg(64, 48, 500)).width == 64  # after the first EOI: not decoded
    with pytest.raises(DecodeError, match="scans"):  # an EOI inside a comment does not end the count
        decode_image(scan_bomb_jpeg(64, 48, 500, before=com))


def test_jpeg_marker_segments_are_limited():
    assert decode_image(segment_bomb_jpeg(MAX_JPEG_SEGMENTS - 50)).width == 64
    with pytest.raises(DecodeError, match="too many JPEG marker segments"):
        decode_image(segment_bomb_jpeg(MAX_JPEG_SEGMENTS + 1))


def test_gif_comment_sub_blocks_are_limited():
    assert decode_image(comment_bomb_gif(MAX_GIF_COMMENT_BLOCKS - 1)).width == 64
    with pytest.raises(DecodeError, match="too many GIF comment sub-blocks"):
        decode_image(comment_bomb_gif(MAX_GIF_COMMENT_BLOCKS))


def test_decoded_bytes_are_limited_not_only_pixels():
    """8000 pixels pass a 10,000-pixel limit; as 16-bit RGBA they decode through 64,000 bytes > 4 x 10,000."""
    assert decode_image(deflate_tiff(100, 80, (8, 8, 8)), max_pixels=10_000).width == 100
    with pytest.raises(DecodeError, match="decompression bomb: 100x80 RGBA decodes to 64000 bytes"):
        decode_image(deflate_tiff(100, 80, (16, 16, 16, 16)), max_pixels=10_000)
    assert decode_image(deflate_tiff(100, 80, (16, 16, 16, 16)), max_pixels=16_000).width == 100


def _float64_levels(img: Image.Image) -> np.ndarray:
    """The conversion before strips: float64 of the whole image, /257 for 16-bit ranges, x255 for 0..1."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr / 257.0
    elif img.mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
    return np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)


def _high_depth_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    floats = rng.random((97, 131), dtype=np.float32)
    odd = floats.copy()
    odd[5, 5], odd[6, 6], odd[7, 7] = np.nan, np.inf, -np.inf
    return {
        "I;16": Image.fromarray(np.arange(65536, dtype=np.uint16).reshape(256, 256)),
        "I;16B": Image.fromarray(rng.integers(0, 65536, (97, 131)).astype(">u2")),
        "I wide": Image.fromarray(rng.integers(-100_000, 100_000, (97, 131), dtype=np.int32)),
        "I narrow": Image.fromarray(rng.integers(-50, 256, (97, 131), dtype=np.int32)),
        "F 0..1": Image.fromarray(floats),
        "F wide": Image.fromarray(floats * 600 - 100),
        "F nan inf": Image.fromarray(odd),
    }


@pytest.mark.parametrize("name", list(_high_depth_images()))
def test_high_depth_strips_match_whole_image_float64(name, monkeypatch):
    monkeypatch.setattr(decode, "STRIP_PIXELS", 100)  # many strips, each part of a row
    img = _high_depth_images()[name]
    out = np.asarray(to_rgb(img))
    assert out.shape == (img.height, img.width, 3)
    assert np.array_equal(out[..., 0], _float64_levels(img)) and np.array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "L", "RGB", "RGBA", "P", "1", "CMYK"])
def test_draft_size_reduces_every_mode(mode):
    fmt = "TIFF" if mode in ("F", "CMYK", "I") else "PNG"
    value = {"I;16": 40000, "I": 40000, "F": 0.5, "RGBA": (200, 100, 50, 255), "1": 1}.get(mode, 128)
    out = decode_image(encode(Image.new(mode, (1000, 800), value), fmt), draft_size=224)
    assert out.image.size == (333, 266) and (out.width, out.height) == (1000, 800)  # 800 // 224 = 3
    expected = {"I;16": 155, "I": 155, "F": 127, "RGBA": 200, "1": 255}.get(mode)
    if expected is not None:
        assert np.asarray(out.image)[100, 100, 0] == expected


@pytest.mark.parametrize("mode", ["I;16", "F", "RGB", "P"])
def test_draft_size_keeps_small_images(mode):
    fmt = "TIFF" if mode == "F" else "PNG"
    assert decode_image(encode(Image.new(mode, (300, 100)), fmt), draft_size=224).image.size == (300, 100)


def test_sixteen_bit_reduce_averages_blocks():
    arr = np.zeros((448, 448), np.uint16)
    arr[::2, ::2] = 65535  # one pixel in four
    out = decode_image(encode(Image.fromarray(arr), "PNG"), draft_size=224)
    assert out.image.size == (224, 224) and set(np.unique(np.asarray(out.image))) == {63}  # 16384 // 257


@pytest.fixture(scope="session")
def png_40mp_16bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("decode") / "ramp-40mp-16bit.png"
    path.write_bytes(sixteen_bit_png(8000, 5000))
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("draft_size, bound_mb", [(0, 400), (224, 200)])
def test_sixteen_bit_40mp_decodes_in_bounded_memory(png_40mp_16bit, draft_size, bound_mb):
    """Peak RSS of a fresh process decoding it (the float64 conversion peaked at 1025 MB)."""
    code = (  # VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss over fork and exec
        "import re, sys, numpy as np\n"
        "from core.decode import decode_image\n"
        f"out = decode_image(open(sys.argv[1], 'rb').read(), draft_size={draft_size})\n"
        "row = np.asarray(out.image.crop((0, 0, out.image.width, 1)))[0, :, 0]\n"
        "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print(out.image.size[0], int(row[0]), int(row[-1]), peak)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(png_40mp_16bit)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    width, first, last, peak_kb = map(int, run.stdout.split())
    assert width == (8000 if draft_size == 0 else 8000 // 22) and first == 0 and last >= 254
    assert peak_kb < bound_mb * 1024
