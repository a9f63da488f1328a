"""Damage to a home's state is detected and repaired: checksummed index versions and shards
(verified on load, cheaply through stamps), the catalog's identity, dead tag runs, `vistag check`."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import sqlalchemy as sa

from core.errors import DamagedState
from indexer import versions
from indexer.catalog import Catalog
from indexer.home import Home
from indexer.lock import WriterLock
from pipeline import shards
from vistag import Archive
from vistag.synth import write_corpus

SHARD = 5


def _vectors(archive: Archive) -> dict[str, np.ndarray]:
    """uri -> vector of every image in the published index."""
    index = versions.current_version(archive.home).load()
    uris = {r["id"]: r["uri"] for r in archive.catalog.images()}
    assert index.ntotal == len(uris)
    return {uris[i]: index.reconstruct(i) for i in uris}


def _same_vectors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for uri, vec in a.items():
        np.testing.assert_allclose(vec, b[uri], atol=1e-5)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model):
    """A home indexed in shards of SHARD images, and its vectors by uri."""
    root = tmp_path_factory.mktemp("integrity")
    corpus = write_corpus(root / "corpus", n=16)
    home = root / "home"
    with Archive(home) as archive:
        archive.index([corpus.root], model=tiny_model, batch_size=8, shard_size=SHARD, chunk_size=SHARD)
        vectors = _vectors(archive)
    return corpus, home, vectors


@pytest.fixture
def copy(built, tmp_path):
    corpus, home, vectors = built
    shutil.copytree(home, tmp_path / "home")
    return tmp_path / "home", corpus, vectors


def _overwrite(path, offset: int, data: bytes) -> None:
    """Overwrite bytes in place (same file, same size), as a stray writer or bad sector would."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "manifest"])
def test_damaged_index_version_is_a_one_line_error_and_the_next_index_rebuilds_it(
    damage, copy, cli, tiny_model
):
    home, corpus, vectors = copy
    version = versions.current_version(Home.resolve(home))
    target = version.path / ("manifest.json" if damage == "manifest" else "index.faiss")
    size = target.stat().st_size
    if damage == "truncated":
        os.truncate(target, size // 2)
    else:
        _overwrite(target, size // 2, b"\x5a" * 64)
    for args in (("similar", "1"), ("search", "a red circle")):
        res = cli(*args, "--home", home)
        assert res.code == 5 and res.out == "", (args, res.err)
        assert res.err.count("\n") == 1 and version.name in res.err and "vistag index" in res.err
    out = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--json").json()
    assert out["embedded"] == 0 and out["index_version"] != version.name  # nothing changed, yet rebuilt
    assert out["index_version"] is not None
    assert not version.path.exists()  # not kept as the previous version
    with Archive(home) as archive:
        _same_vectors(_vectors(archive), vectors)
    assert cli("check", "--home", home).code == 0


def test_a_stamp_spares_the_hash_until_the_file_changes(tmp_path, monkeypatch):
    data = tmp_path / "a.bin"
    data.write_bytes(b"x" * 1000)
    want = {"a.bin": shards.checksum_file(str(data))}
    stamp = str(tmp_path / "stamp.json")

    def verify(**kw):
        return shards.verify_files(str(tmp_path), want, "thing", "repair it", stamp=stamp, **kw)

    monkeypatch.setattr(shards, "RACY_NS", 10**18)
    assert verify() == 1000  # no stamp: hashed, then stamped
    assert verify() == 1000  # stamped within RACY_NS of the file's last change: the stamp cannot vouch
    monkeypatch.setattr(shards, "RACY_NS", 0)
    assert verify() == 0  # vouched for: not read
    assert verify(full=True) == 1000  # `vistag check` hashes regardless
    time.sleep(0.05)  # past the filesystem clock's tick, so the change below gets a new ctime
    _overwrite(data, 10, b"y")  # same size, same inode
    with pytest.raises(DamagedState, match="a.bin differs from its SHA-256"):
        verify()
    data.write_bytes(b"x" * 999)
    with pytest.raises(DamagedState, match="a.bin has 999 bytes, not 1000"):
        verify()


def _npy_data_offset(path) -> int:
    with open(path, "rb") as fh:
        np.lib.format.read_array_header_1_0(fh) if np.lib.format.read_magic(fh) == (1, 0) else None
        return fh.tell()


@pytest.mark.parametrize("damage", ["zeroed", "truncated"])
def test_damaged_shard_is_refused_and_exactly_its_images_are_embedded_again(damage, copy, cli, tiny_model):
    home, corpus, vectors = copy
    with Archive(home) as archive, archive.catalog.engine.connect() as conn:
        query = (
            "SELECT shard_dir, shard, count(*) FROM embeddings GROUP BY shard_dir, shard HAVING count(*) = :n"
        )
        shard_dir, shard, held = conn.execute(sa.text(query), {"n": SHARD}).first()
    npy = home / shard_dir / f"{shard}.npy"
    if damage == "zeroed":  # the header stays: the file still loads, as zero vectors
        offset = _npy_data_offset(npy)
        _overwrite(npy, offset, bytes(npy.stat().st_size - offset))
    else:
        os.truncate(npy, npy.stat().st_size - 40)
    res = cli("tag", "--labels", "circle,square", "--home", home)
    assert res.code == 5 and shard in res.err and res.err.count("\n") == 1, res.err
    out = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--json").json()
    assert out["embedded"] == held  # exactly the images whose vectors were lost
    with Archive(home) as archive:
        _same_vectors(_vectors(archive), vectors)
    assert cli("tag", "--labels", "circle,square", "--home", home).code == 0
    assert cli("check", "--home", home).code == 0


@pytest.mark.parametrize("version_has_id", [True, False])
def test_deleted_catalog_is_named_and_rebuilt_from_the_shards_without_embedding(
    version_has_id, copy, cli, tiny_model
):
    home, corpus, vectors = copy
    with Archive(home) as archive:
        sizes = {r["uri"]: (r["width"], r["height"]) for r in archive.catalog.images()}
        top = cli("search", "a red circle", "--home", home, "--json").json()
        manifest = versions.current_version(archive.home).path / "manifest.json"
    if not version_has_id:  # written before catalogs had an id: told apart by the empty catalog
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"catalog_id": None}))
    for path in home.glob("catalog.db*"):
        path.unlink()
    res = cli("search", "a red circle", "--home", home)
    assert res.code == 5 and res.out == "" and res.err.count("\n") == 1
    assert "not the one" in res.err and "vistag index PATH" in res.err and "without re-embedding" in res.err
    assert "not the one" in cli("status", "--home", home, "--json").json()["problem"]
    text = cli("status", "--home", home).out
    assert "problem:" in text and "0 indexed" not in text
    assert cli("check", "--home", home).code == 5
    out = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--json").json()
    assert out["embedded"] == 0 and out["reused"] == len(sizes) and out["index_version"]  # hashed only
    with Archive(home) as archive:
        assert archive.status()["problem"] is None and archive.status()["indexed"] == len(sizes)
        assert {r["uri"]: (r["width"], r["height"]) for r in archive.catalog.images()} == sizes
        assert versions.current_version(archive.home).manifest["catalog_id"] == archive.catalog.catalog_id()
        _same_vectors(_vectors(archive), vectors)
    again = cli("search", "a red circle", "--home", home, "--json").json()
    assert [(h["uri"], h["score"]) for h in again] == [(h["uri"], h["score"]) for h in top]
    assert cli("check", "--home", home).code == 0


def _leave_dead_tag_run(archive: Archive, home) -> tuple[int, object]:
    """What a tag process killed mid-way leaves: a run still ``running``, some tags, its folder."""
    catalog = archive.catalog
    model_id = catalog.model_id(versions.current_version(archive.home).identity)
    run = catalog.start_run("tag", model_id, {"labels": ["x"]})
    label = catalog.label_ids(["x"])[0]
    rows = [
        {
            "image_id": r["id"],
            "label_id": label,
            "score": 0.5,
            "confidence": 0.5,
            "rank": 0,
            "method": "zeroshot",
            "run_id": run,
        }
        for r in catalog.images()[:3]
    ]
    catalog.add_tags(rows)
    folder = home / "tagruns" / f"run-{run:06d}"
    folder.mkdir(parents=True)
    (folder / "text.npz").write_bytes(b"partial")
    return run, folder


@pytest.mark.parametrize("writer", ["tag", "index"])
def test_a_killed_tag_run_is_closed_and_its_partial_tags_deleted_by_the_next_writer(writer, copy, tiny_model):
    home, corpus, _ = copy
    with Archive(home) as archive:
        dead, folder = _leave_dead_tag_run(archive, home)
        if writer == "tag":
            assert archive.catalog.tags(dead)
            done = archive.tag(["circle", "square"]).run_id
            assert archive.catalog.tags(done)
        else:
            archive.index([corpus.root], model=tiny_model)
        runs = {r["id"]: r for r in archive.runs()}
        assert runs[dead]["status"] == "interrupted"
        assert archive.catalog.tags(dead) == [] and not folder.exists()


def test_tag_takes_the_writer_lock(copy, cli):
    home, _, _ = copy
    with WriterLock(home / "lock"):
        res = cli("tag", "--labels", "circle,square", "--home", home)
    assert res.code == 5 and "another vistag run is writing" in res.err and res.err.count("\n") == 1
    with Archive(home) as archive:
        assert [r for r in archive.runs() if r["kind"] == "tag"] == []


def test_check_hashes_everything_and_says_how_to_repair(copy, cli, tiny_model):
    home, corpus, _ = copy
    report = cli("check", "--home", home, "--json").json()
    assert report["ok"] and report["damaged"] == [] and report["notes"] == []
    assert (
        report["checked"]["versions"] == 1
        and report["checked"]["shards"] >= 3
        and report["checked"]["bytes"] > 0
    )
    with Archive(home) as archive:
        shard_dir, shard, held = archive.catalog.embedding_shards()[0]
        version = versions.current_version(archive.home)
    _overwrite(home / shard_dir / f"{shard}.parquet", 20, b"\xff\xfe")
    with open(version.path / "index.faiss", "ab") as fh:
        fh.write(b"\0")
    res = cli("check", "--home", home, "--json")
    assert res.code == 5
    damaged = {d["kind"]: d for d in res.json()["damaged"]}
    assert damaged.keys() == {"shard", "index"}
    assert (
        damaged["shard"]["path"] == f"{shard_dir}/{shard}"
        and f"re-embeds the {held} images" in damaged["shard"]["repair"]
    )
    assert "index.faiss has" in damaged["index"]["problem"] and "rebuilds it" in damaged["index"]["repair"]
    text = cli("check", "--home", home)
    assert text.code == 5 and "damaged shard" in text.out and "repair: `vistag index PATH`" in text.out
    assert cli("index", corpus.root, "--home", home, "--model", tiny_model).code == 0
    assert cli("check", "--home", home).code == 0


def test_state_written_before_checksums_still_loads_unchecked(copy, cli, tiny_model):
    home, corpus, _ = copy
    manifests = [p for p in (home / "shards").rglob("*.json") if ".tmp-" not in p.name]
    manifests += list((home / "index").glob("*/v*/manifest.json"))
    for path in manifests:
        data = json.loads(path.read_text())
        data.pop("files", None)
        data.pop("catalog_id", None)
        path.write_text(json.dumps(data))
    for stamp in [*home.rglob("*.stamp"), *home.rglob("stamp.json")]:
        stamp.unlink()
    res = cli("similar", "1", "--home", home)
    assert res.code == 0 and res.out.strip()
    report = cli("check", "--home", home, "--json").json()
    assert report["ok"] and report["notes"] and all("before checksums" in n for n in report["notes"])
    out = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--json").json()
    assert out["embedded"] == 0 and out["index_version"] is None  # nothing changed, nothing rebuilt


def test_catalog_identity_is_kept_and_given_to_catalogs_from_before(tmp_path):
    from tests.helpers import catalog_at_revision

    url = catalog_at_revision(tmp_path / "old.db", "0003")
    first = Catalog(url)
    ident = first.catalog_id()
    first.close()
    again = Catalog(url)
    assert len(ident) == 32 and again.catalog_id() == ident
    again.close()
    other = Catalog(f"sqlite:///{tmp_path / 'new.db'}")
    assert other.catalog_id() not in ("", ident)
    other.close()


def test_an_index_of_an_unknown_format_is_a_damaged_state_not_a_model_mismatch(cli, home_copy):
    """The error says what happened (exit 5, "unknown format version"), not that models differ (3)."""
    home, _ = home_copy
    manifest = versions.current_version(Home.resolve(home)).path / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format_version": 99}))
    out = cli("search", "a red circle", "--home", home)
    assert out.code == 5 and "unknown format version 99" in out.err and out.err.count("\n") == 1
