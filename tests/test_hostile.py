"""Hostile archives and a fuzzed decoder: every run finishes, every good image is indexed, every
bad file is recorded once with a stage and a reason, and nothing is retried forever."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.decode import DecodeError, decode_image
from vistag import Archive
from vistag.synth.hostile import make_hostile


def test_hostile_archive(tmp_path, tiny_model):
    files = make_hostile(tmp_path / "archive")
    good = {str(p) for p, e in files if e == "index"}
    bad = {str(p): e for p, e in files if e != "index"}
    with Archive(tmp_path / "home") as archive:
        first = archive.index([tmp_path / "archive"], model=tiny_model)
        assert first.embedded + first.reused == len(good) and first.failed == len(bad)
        indexed = {r["uri"] for r in archive.catalog.images()}
        assert indexed == good
        failures = {f["uri"]: f for f in archive.failures()}
        assert set(failures) == set(bad)
        for uri, stage in bad.items():
            assert failures[uri]["stage"] == stage and failures[uri]["reason"]
        assert "decompression bomb" in failures[str(tmp_path / "archive" / "bomb.png")]["reason"]
        rotated = archive.catalog.image(str(tmp_path / "archive" / "exif-rotated.jpg"))
        assert (rotated["width"], rotated["height"]) == (30, 80)
        second = archive.index([tmp_path / "archive"], model=tiny_model)
        assert second.embedded == 0 and second.failed == 0  # bad files are not retried until they change
        assert len(archive.failures()) == len(bad)
        newline = str(tmp_path / "archive" / "new\nline.png")
        assert archive.similar(newline, k=1)[0].uri == newline
        rows = {r["uri"] for r in archive.export_rows()}
        assert good | set(bad) == rows


def test_files_vanishing_between_listing_and_reading(tmp_path, tiny_model, corpus, monkeypatch):
    import indexer.job as job

    real = job.expand_inputs
    victim = corpus.good[0]

    def list_then_delete(inputs):
        listing = real(inputs)
        victim.unlink()
        return listing

    monkeypatch.setattr(job, "expand_inputs", list_then_delete)
    with Archive(tmp_path / "home") as archive:
        result = archive.index([corpus.root], model=tiny_model)
        failures = {f["uri"]: f for f in archive.failures()}
    assert failures[str(victim)]["stage"] == "read"
    assert result.embedded == len(corpus.good) - 1


def _valid_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((24, 32, 3)) * 255).astype("uint8"))
    out = []
    for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(buf.getvalue())
    return out


VALID = _valid_images()


def _check(data: bytes) -> None:
    try:
        out = decode_image(data, max_pixels=4_000_000)
    except DecodeError as err:
        assert err.reason
        return
    assert out.image.mode == "RGB" and out.width > 0 and out.height > 0


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data):
    _check(data)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(VALID))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    st.integers(0, 10_000),
)
def test_fuzz_mutated_images(which, flips, cut):
    data = bytearray(VALID[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check(bytes(data[: max(1, len(data) - cut % len(data))]))
