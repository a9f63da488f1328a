"""Search filters from the command line: date taken (EXIF, else mtime), folder, tag; and exactly k
hits whenever k images pass, on an approximate index too."""

from __future__ import annotations

import io
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import search_names
from vistag import synth

DATED = {  # file -> EXIF DateTimeOriginal
    "2019/a.jpg": "2019:01:15 09:00:00",
    "2019/b.jpg": "2019:06:30 23:59:00",
    "2019/c.jpg": "2019:12:31 12:00:00",
    "2019-old/d.jpg": "2021:03:01 08:00:00",
    "2019-old/e.jpg": "2021:07:04 18:30:00",
}
UNDATED = {"misc/f.jpg": 1_420_070_400.0, "misc/g.jpg": 1_500_000_000.0}  # no EXIF: mtime (2015, 2017)


def _jpeg(seed: int, taken: str | None) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    extra = {}
    if taken:
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = taken
        extra["exif"] = exif.tobytes()
    img.save(buf, "JPEG", quality=90, **extra)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dated_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path]:
    from vistag import Archive

    root = tmp_path_factory.mktemp("dated")
    photos = root / "photos"
    for seed, (name, taken) in enumerate({**DATED, **dict.fromkeys(UNDATED)}.items()):
        path = photos / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_jpeg(seed, taken))
        os.utime(path, (UNDATED.get(name, 1.7e9),) * 2)  # dated files: mtime in 2023, never their date
    with Archive(root / "home") as archive:
        archive.index([photos], model=tiny_model, batch_size=8)
    return root / "home", photos


def test_date_taken_folder_and_their_combinations(cli, dated_home):
    home, photos = dated_home
    assert search_names(cli, home, photos, "--since", "2019-01-01", "--until", "2019-12-31") == {
        "2019/a.jpg",
        "2019/b.jpg",
        "2019/c.jpg",
    }
    assert search_names(cli, home, photos, "--since", "2019-06-30T23:00:00", "--until", "2021-03-01") == {
        "2019/b.jpg",
        "2019/c.jpg",
        "2019-old/d.jpg",
    }
    assert search_names(cli, home, photos, "--until", "2018-12-31") == set(UNDATED)  # by mtime: no EXIF date
    assert search_names(cli, home, photos, "--until", "2016-01-01") == {"misc/f.jpg"}
    assert search_names(cli, home, photos, "--path", photos / "2019") == {
        "2019/a.jpg",
        "2019/b.jpg",
        "2019/c.jpg",
    }
    assert search_names(cli, home, photos, "--path", photos / "2019-old", "--since", "2021-05-01") == {
        "2019-old/e.jpg"
    }
    out = cli("search", "a photo", "--home", home, "--since", "2030-01-01")
    assert out.code == 0 and out.out == "" and "no indexed image matches" in out.err
    out = cli("similar", photos / "2019" / "a.jpg", "--home", home, "--json", "--path", photos / "misc")
    assert out.code == 0 and {Path(h["uri"]).name for h in out.json()} == {"f.jpg", "g.jpg"}


def test_bad_filters_are_one_line_errors(cli, dated_home):
    home, _ = dated_home
    for options, message in [
        (("--since", "last week"), "not an ISO 8601 date or epoch seconds"),
        (("--since", "2020-01-01", "--until", "2019-01-01"), "since is after until"),
    ]:
        out = cli("search", "a photo", "--home", home, *options)
        assert out.code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err


def test_an_approximate_index_still_returns_k_hits_of_a_narrow_filter(cli, tmp_path, tiny_model, monkeypatch):
    """HNSW walks its graph and stops: with 12 of 312 images passing, FAISS alone returns fewer than
    k; the search fills them exactly, and they are the exact top k among the 12."""
    from query.search import Searcher

    synth.make_corpus(tmp_path / "photos" / "many", 300, seed=1, image_sizes=(40, 48))
    synth.make_corpus(tmp_path / "photos" / "few", 12, seed=2, image_sizes=(40, 48))
    home = tmp_path / "home"
    out = cli("index", tmp_path / "photos", "--home", home, "--model", tiny_model, "--index-type", "HNSW32")
    assert out.code == 0, out.err
    assert cli("status", "--home", home, "--json").json()["index"]["type"].startswith("HNSW")
    few = tmp_path / "photos" / "few"
    hits = cli("search", "a red circle", "--home", home, "-k", 10, "--json", "--path", few).json()
    assert len(hits) == 10 and all(Path(h["uri"]).parent == few for h in hits)
    out = cli("export", "--home", home, "--format", "npz", "-o", tmp_path / "v.npz")
    data = np.load(tmp_path / "v.npz")
    inside = np.array([Path(u).parent == few for u in data["uris"]])
    query = _query_vector(home)
    scores = data["vectors"][inside] @ query
    exact = [int(i) for i in data["ids"][inside][np.argsort(-scores, kind="stable")][:10]]
    assert [h["id"] for h in hits] == exact
    monkeypatch.setattr(Searcher, "_complete", lambda self, xq, k, ids, D, I: (D, I))  # FAISS alone
    alone = cli("search", "a red circle", "--home", home, "-k", 10, "--json", "--path", few).json()
    assert len(alone) < 10  # the control: without filling, the filter would quietly return fewer


def _query_vector(home: Path) -> np.ndarray:
    from vistag import Archive

    with Archive(home) as archive:
        return archive.searcher.encode_text(["a red circle"])[0]


def test_since_and_until_take_offsets_and_dates_as_utc():
    from query.filters import parse_time

    assert parse_time("2019-06-30") == datetime(2019, 6, 30, tzinfo=timezone.utc).timestamp()
    assert (
        parse_time("2019-06-30T12:00:00+02:00") == datetime(2019, 6, 30, 10, tzinfo=timezone.utc).timestamp()
    )
