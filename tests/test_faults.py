"""Storage faults (disk full) while writing shards, the index and the catalog: the run stops with
a one-line error, nothing half-written is published, and the next run repairs everything."""

from __future__ import annotations

import errno

import pytest
import sqlalchemy as sa

from core.errors import IndexNotFound
from indexer import versions
from vistag import Archive


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _state(home):
    with Archive(home) as archive:
        rows = {r["uri"]: r["sha256"] for r in archive.catalog.images()}
        count = versions.current_version(archive.home).load().ntotal
    return rows, count


@pytest.fixture
def reference(corpus, tiny_model, tmp_path):
    with Archive(tmp_path / "ref") as archive:
        archive.index([corpus.root], model=tiny_model)
    return _state(tmp_path / "ref")


def test_disk_full_while_writing_the_index(corpus, tiny_model, tmp_path, monkeypatch, cli, reference):
    import faiss

    monkeypatch.setattr(faiss, "write_index", _enospc)
    res = cli("index", corpus.root, "--home", tmp_path / "h", "--model", tiny_model)
    assert res.code == 5 and "No space left on device" in res.err and res.err.count("\n") == 1
    with Archive(tmp_path / "h") as archive, pytest.raises(IndexNotFound):
        versions.current_version(archive.home)
    monkeypatch.undo()
    with Archive(tmp_path / "h") as archive:
        assert archive.index([corpus.root], model=tiny_model).embedded == 0  # embeddings were kept
    assert _state(tmp_path / "h") == reference
    assert not [p for p in (tmp_path / "h" / "index").rglob("*") if ".tmp-" in p.name]


def test_disk_full_while_writing_shards(corpus, tiny_model, tmp_path, monkeypatch, cli, reference):
    import numpy as np

    real_save = np.save
    calls = []

    def save_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            _enospc()
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_fail)
    res = cli("index", corpus.root, "--home", tmp_path / "h", "--model", tiny_model, "--shard-size", "5")
    assert res.code == 6 and "No space left on device" in res.err and res.err.count("\n") == 1
    monkeypatch.undo()
    with Archive(tmp_path / "h") as archive:
        again = archive.index([corpus.root], model=tiny_model)
        assert archive.runs()[1]["status"] == "failed"
    assert again.embedded < len(corpus.good)  # the shard written before the disk filled was kept
    assert _state(tmp_path / "h") == reference


def test_database_failure_mid_apply(corpus, tiny_model, tmp_path, monkeypatch, reference, cli):
    from indexer.catalog import Catalog

    real = Catalog.add_embeddings
    calls = []

    def fail_second(self, rows):
        calls.append(1)
        if len(calls) == 2:
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return real(self, rows)

    monkeypatch.setattr(Catalog, "add_embeddings", fail_second)
    res = cli("index", corpus.root, "--home", tmp_path / "h", "--model", tiny_model, "--shard-size", "5")
    assert res.code == 5 and "catalog database: database is locked" in res.err and res.err.count("\n") == 1
    monkeypatch.undo()
    with Archive(tmp_path / "h") as archive:
        assert archive.index([corpus.root], model=tiny_model).embedded == 0  # all shards were complete
    assert _state(tmp_path / "h") == reference
