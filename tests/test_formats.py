"""HEIF/HEIC, AVIF, multi-page TIFF and camera RAW (DNG written here with pidng): decoded by
content, upright, resembling their source, bounded before decoding, listed by extension in any
case (sidecars never), and a corrupt one is a failure row with a reason, never a crash."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from core.decode import DecodeError, decode_image
from pipeline.inputs import expand_inputs
from vistag.synth.raw import dng, with_preview

RED, BLUE, GREEN = (200, 40, 40), (40, 40, 200), (30, 160, 30)


def two_tone(width: int = 600, height: int = 400) -> np.ndarray:
    """(height, width, 3) uint8: the left half RED, the right half BLUE."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:, : width // 2], rgb[:, width // 2 :] = RED, BLUE
    return rgb


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, **options)
    return out.getvalue()


def heic(image: Image.Image) -> bytes:
    """HEIC bytes of ``image``, written without registering pillow-heif with Pillow."""
    import pillow_heif

    out = io.BytesIO()
    pillow_heif.from_pillow(image).save(out, quality=95)
    return out.getvalue()


def mean(image: Image.Image, box: tuple[float, float, float, float] = (0, 0, 1, 1)) -> np.ndarray:
    """Mean RGB of the part of ``image`` in ``box`` (left, top, right, bottom as fractions)."""
    w, h = image.size
    part = image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h)))
    return np.asarray(part.convert("RGB"), np.float64).reshape(-1, 3).mean(axis=0)


def reddish(colour: np.ndarray) -> bool:
    return colour[0] > colour[2] + 60 and colour[0] > colour[1] + 60


def bluish(colour: np.ndarray) -> bool:
    return colour[2] > colour[0] + 60 and colour[2] > colour[1] + 60


def test_heic_decodes_by_content_whatever_its_name():
    source = Image.fromarray(two_tone(320, 240))
    for name in ("photo.heic", "photo.jpg", ""):
        decoded = decode_image(heic(source), draft_size=64, name=name)
        assert decoded.format == "HEIF" and (decoded.width, decoded.height) == (320, 240)
        assert np.abs(mean(decoded.image, (0, 0, 0.4, 1)) - RED).max() < 8
        assert np.abs(mean(decoded.image, (0.6, 0, 1, 1)) - BLUE).max() < 8


def test_heic_size_is_checked_before_decoding(monkeypatch):
    from pillow_heif.as_plugin import HeifImageFile

    data = heic(Image.new("RGB", (400, 300), GREEN))

    def no_decoding(self: object) -> None:
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(HeifImageFile, "load", no_decoding)
    with pytest.raises(DecodeError, match="decompression bomb: 400x300 exceeds 100000 pixels"):
        decode_image(data, max_pixels=100_000)


def test_multipage_tiff_gives_its_first_page():
    out = io.BytesIO()
    first, second = Image.new("RGB", (64, 48), RED), Image.new("RGB", (96, 96), BLUE)
    first.save(out, "TIFF", save_all=True, append_images=[second])
    decoded = decode_image(out.getvalue())
    assert decoded.format == "TIFF" and (decoded.width, decoded.height) == (64, 48)
    assert np.abs(mean(decoded.image) - RED).max() < 1


def test_dng_without_preview_is_demosaiced_at_half_size_and_upright():
    data = dng(two_tone(600, 400), orientation=6)  # stored landscape, shown turned 90 degrees clockwise
    for name in ("shot.dng", "shot.tif", ""):  # a DNG is told by its DNGVersion tag, whatever its name
        decoded = decode_image(data, draft_size=64, name=name)
        assert decoded.format == "RAW" and (decoded.width, decoded.height) == (400, 600)
        assert decoded.orientation == 6 and decoded.image.size == (66, 100)  # 200 x 300 reduced by 3
        assert reddish(mean(decoded.image, (0, 0, 1, 0.4))) and bluish(mean(decoded.image, (0, 0.6, 1, 1)))


def test_dng_uses_its_preview_when_large_enough():
    data = with_preview(dng(two_tone(600, 400), orientation=6), jpeg(Image.new("RGB", (600, 400), GREEN)))
    small = decode_image(data, draft_size=224, name="shot.dng")  # the 600 x 400 preview is enough
    assert small.format == "RAW" and (small.width, small.height) == (400, 600)
    assert small.image.size[0] < small.image.size[1]  # upright
    assert np.abs(mean(small.image) - GREEN).max() < 4
    large = decode_image(data, draft_size=500, name="shot.dng")  # too small for 500: the sensor data
    assert reddish(mean(large.image, (0, 0, 1, 0.4))) and bluish(mean(large.image, (0, 0.6, 1, 1)))


def test_preview_turned_by_the_raw_orientation_when_its_own_exif_says_nothing():
    exif = Image.Exif()
    exif[0x0112] = 1
    preview = jpeg(Image.fromarray(two_tone(600, 400)), exif=exif.tobytes())
    # EXIF as the first segment (no JFIF APP0 before it): LibRaw then keeps it instead of adding
    # its own with the RAW's orientation, as with a camera's preview
    preview = preview[:2] + preview[4 + int.from_bytes(preview[4:6], "big") :]
    data = with_preview(dng(two_tone(600, 400), orientation=6), preview)
    decoded = decode_image(data, draft_size=200, name="shot.dng")
    assert decoded.image.size == (200, 300)
    assert reddish(mean(decoded.image, (0, 0, 1, 0.4))) and bluish(mean(decoded.image, (0, 0.6, 1, 1)))


def test_raw_sensor_size_is_checked_before_unpacking():
    data = dng(two_tone(600, 400))
    with pytest.raises(DecodeError, match="decompression bomb: RAW 600x400 exceeds 200000 pixels"):
        decode_image(data, max_pixels=200_000, name="shot.dng")


def test_raw_extension_on_other_content_decodes_by_content():
    source = Image.new("RGB", (80, 60), BLUE)
    decoded = decode_image(jpeg(source), name="not-really.nef")
    assert decoded.format == "JPEG" and np.abs(mean(decoded.image) - BLUE).max() < 4


def test_corrupt_heic_and_raw_raise_decode_errors():
    truncated_dng = dng(two_tone(600, 400))[:3000]
    with pytest.raises(DecodeError, match="corrupt RAW"):
        decode_image(truncated_dng, name="cut.dng")
    truncated_heic = heic(Image.new("RGB", (300, 200), RED))[:300]
    with pytest.raises(DecodeError):
        decode_image(truncated_heic, name="cut.heic")


def test_listing_knows_new_extensions_in_any_case_and_never_sidecars(tmp_path):
    names = ["photo.jpg", "photo.jpg.xmp", "photo.xmp", "IMG_1.HEIC", "b.heif", "c.Avif", "d.DNG", "e.cr2"]
    names += ["f.CR3", "g.nef", "h.ARW", "i.raf", "j.ORF", "k.rw2", "l.Pef", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    listing = expand_inputs([str(tmp_path)])
    listed = {Path(e.uri).name for e in listing.entries}
    assert listed == set(names) - {"photo.jpg.xmp", "photo.xmp", "notes.txt"}
    assert listing.missing == ()


def write_archive(root: Path) -> tuple[dict[str, str], list[str]]:
    """An archive of every format; returns {file name: expected (width, height) as 'WxH'} of the
    good files and the names of the corrupt ones."""
    root.mkdir(parents=True)
    source = Image.fromarray(two_tone(320, 240))
    files = {
        "photo.jpg": jpeg(source),
        "photo.jpg.xmp": b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>",
        "photo.xmp": b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>",
        "phone.HEIC": heic(source),
        "heic-named.jpg": heic(source.transpose(Image.Transpose.ROTATE_90)),
        "shot.dng": dng(two_tone(600, 400), orientation=6),
        "SHOT2.DNG": with_preview(dng(two_tone(600, 400)), jpeg(Image.new("RGB", (600, 400), GREEN))),
        "corrupt.heic": heic(source)[:200],
        "corrupt.dng": dng(two_tone(600, 400))[:3000],
    }
    expected = {"photo.jpg": "320x240", "phone.HEIC": "320x240", "heic-named.jpg": "240x320"}
    expected |= {"shot.dng": "400x600", "SHOT2.DNG": "600x400"}
    if features.check("avif"):
        out = io.BytesIO()
        source.save(out, "AVIF", quality=90)
        files["web.avif"], expected["web.avif"] = out.getvalue(), "320x240"
    for name, data in files.items():
        (root / name).write_bytes(data)
    return expected, ["corrupt.heic", "corrupt.dng"]


def test_index_run_decodes_every_format_and_records_corrupt_files(cli, tiny_model, tmp_path):
    from vistag import Archive

    expected, corrupt = write_archive(tmp_path / "archive")
    home = tmp_path / "home"
    res = cli("index", tmp_path / "archive", "--home", home, "--model", tiny_model, "--json")
    assert res.code == 0, res.err
    result = res.json()
    assert result["embedded"] == len(expected) and result["failed"] == len(corrupt)
    failures = cli("failures", "--home", home, "--json").json()
    assert sorted(Path(f["uri"]).name for f in failures) == sorted(corrupt)  # no sidecar among them
    assert all(f["stage"] == "decode" and f["reason"] for f in failures)
    reasons = {Path(f["uri"]).name: f["reason"] for f in failures}
    assert "corrupt RAW" in reasons["corrupt.dng"]
    with Archive(home) as archive:
        sizes = {Path(r["uri"]).name: f"{r['width']}x{r['height']}" for r in archive.catalog.images()}
    assert sizes == expected


def test_thumbnails_and_image_queries_pass_the_file_name_that_tells_a_raw(monkeypatch, tmp_path):
    """NEF, ARW and PEF files are plain TIFFs inside: only their name says RAW, so every decode of a
    file (thumbnails and image queries too, not only indexing) passes it."""
    import query.search
    import vistag.http.thumbnails as thumbnails

    seen: list[str] = []
    real = decode_image

    def spy(data: bytes, **kwargs: object) -> object:
        seen.append(str(kwargs.get("name", "")))
        return real(data, **kwargs)

    monkeypatch.setattr(thumbnails, "decode_image", spy)
    thumbnails.render_thumbnail(jpeg(Image.new("RGB", (64, 48), RED)), 32, name="/photos/a.nef")
    monkeypatch.setattr("core.decode.decode_image", spy)

    class Model:
        identity = type("I", (), {"preprocess": {"size": 32}})()

        @staticmethod
        def transform(image: Image.Image) -> object:
            return np.asarray(image)

    searcher = query.search.Searcher.__new__(query.search.Searcher)
    monkeypatch.setattr(searcher, "model", lambda: Model(), raising=False)
    monkeypatch.setattr("core.encode.encode_images", lambda model, batch: np.zeros((1, 4), np.float32))
    (tmp_path / "b.arw").write_bytes(jpeg(Image.new("RGB", (64, 48), BLUE)))
    searcher.embed_file(str(tmp_path / "b.arw"))
    assert seen == ["/photos/a.nef", str(tmp_path / "b.arw")]
