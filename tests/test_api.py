"""The Python API: the same operations as the CLI, plus incremental behaviour of re-runs."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from core.errors import EmptyCorpus, LockHeld, NotFound
from indexer.home import Home
from indexer.lock import WriterLock
from vistag import Archive
from vistag.synth import make_tiny_model


def test_api_search_similar_tag_status(home_copy):
    home, corpus = home_copy
    with Archive(home) as archive:
        status = archive.status()
        assert status["indexed"] == len(corpus.good) and status["failed"] == len(corpus.bad)
        hits = archive.search("a photo of a star", k=4)
        assert len(hits) == 4 and all(h.uri in {str(p) for p in corpus.good} for h in hits)
        sim = archive.similar(corpus.good[0], k=2)
        assert sim[0].uri == str(corpus.good[0]) and sim[0].score == pytest.approx(1.0, abs=1e-4)
        # an image file that is not indexed is embedded on the fly and finds its indexed twin
        outside = home.parent / "outside.png"
        shutil.copy(corpus.good[1], outside)
        assert archive.similar(outside, k=1)[0].uri == str(corpus.good[1])
        with pytest.raises(NotFound):
            archive.similar(999_999)
        result = archive.tag(["circle", "square"], top=1)
        assert result.images == len(corpus.good) and len(result.top) == len(corpus.good)
        rows = archive.export_rows()
        assert {r["uri"] for r in rows} == {str(p) for p in corpus.good + corpus.bad}


def test_changed_deleted_moved_and_duplicated_files(corpus, tiny_model, tmp_path):
    good = list(corpus.good)
    with Archive(tmp_path / "home") as archive:
        archive.index([corpus.root], model=tiny_model)
        before = {h.uri: h.id for h in archive.similar(good[2], k=len(good))}
        os.remove(good[0])  # deleted
        shutil.move(good[1], corpus.root / "moved.png")  # moved: same content, new name
        shutil.copy(good[3], corpus.root / "copy.jpg")  # duplicate content
        shutil.copy(good[5], good[4])  # changed in place
        os.utime(good[4], (1, 1))
        result = archive.index([corpus.root], model=tiny_model)
        plan = result.plan.counts()
        assert (plan["new"], plan["changed"], plan["deleted"]) == (2, 1, 2)
        assert result.reused == 3 and result.embedded == 0  # all new content was known already
        uris = {h.uri for h in archive.similar(good[2], k=100)}
        assert str(good[0]) not in uris and str(good[1]) not in uris
        assert {str(corpus.root / "moved.png"), str(corpus.root / "copy.jpg"), str(good[4])} <= uris
        assert archive.status()["indexed"] == len(good) and archive.status()["deleted"] == 2
        assert before[str(good[2])] == archive.similar(good[2], k=1)[0].id  # ids are stable
        moved = archive.catalog.image(str(corpus.root / "moved.png"))
        assert moved["width"] > 0 and moved["sha256"]


def test_model_switch_builds_a_new_version_and_refuses_mixing(home_copy, tmp_path):
    home, corpus = home_copy
    other = "local-dir:" + str(make_tiny_model(tmp_path / "other", seed=7))
    with Archive(home) as archive:
        old = archive.status()
        result = archive.index([corpus.root], model=other)
        assert result.embedded == len(corpus.good)  # every image embedded again with the new model
        new = archive.status()
        assert new["model"]["key"] != old["model"]["key"] and new["index"]["count"] == len(corpus.good)
        assert archive.search("circle", k=3)  # queries are encoded by the new model
        ids = [h.id for h in archive.similar(corpus.good[0], k=1)]
        assert ids and np.isfinite(archive.searcher.image_vector(ids[0])).all()


def test_writer_lock_blocks_a_second_writer(tmp_path, corpus, tiny_model):
    home = Home.resolve(tmp_path / "home").ensure()
    with WriterLock(home.lock_path):
        with pytest.raises(LockHeld, match="another vistag run"):
            Archive(home.root).index([corpus.root], model=tiny_model)
    # released: the next writer goes ahead
    assert Archive(home.root).index([corpus.root], model=tiny_model, dry_run=True).plan.counts()["new"] > 0


def test_empty_corpus(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyCorpus):
        Archive(tmp_path / "home").index([tmp_path / "empty"], model=tiny_model)


def test_shards_outside_the_home(corpus, tiny_model, tmp_path, cli):
    """--shards puts the embedding shards elsewhere (a shared location for remote workers)."""
    shared = tmp_path / "shared-shards"
    res = cli(
        "index", corpus.root, "--home", tmp_path / "home", "--model", tiny_model, "--shards", shared, "--json"
    )
    assert res.code == 0, res.err
    assert list(shared.rglob("*.npy")) and not (tmp_path / "home" / "shards").exists()
    hits = cli("similar", corpus.good[0], "-k", 1, "--home", tmp_path / "home", "--json").json()
    assert hits[0]["uri"] == str(corpus.good[0])


def test_beam_options_from_a_file(corpus, tiny_model, tmp_path, cli):
    options = tmp_path / "local.args"
    options.write_text("--runner=FnApiRunner\n--direct_num_workers=1\n")
    res = cli(
        "index", corpus.root, "--home", tmp_path / "home", "--model", tiny_model, f"@{options}", "--json"
    )
    assert res.code == 0, res.err
    assert res.json()["embedded"] == len(corpus.good)
