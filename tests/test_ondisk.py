"""On-disk IVF builds (blocks merged into index.ivfdata), relocatable version folders, memory-mapped
reading for serving, and the planner's choice between memory and disk."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from core.models import ModelIdentity
from indexer import build, vectors, versions
from indexer.choice import choose_index, recall_at, set_search_params
from indexer.home import Home
from pipeline import shards

D = 32
N = 4000
IDENTITY = ModelIdentity("m", None, D, {"size": 32}, "")


def _norm(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _vectors(n=N, d=D, seed=0):
    rng = np.random.default_rng(seed)
    centres = _norm(rng.standard_normal((40, d)))
    xb = _norm(centres[rng.integers(0, 40, n)] + 0.3 * rng.standard_normal((n, d)))
    gap = _norm(rng.standard_normal((1, d)))
    xt = _norm(0.5 * centres[rng.integers(0, 40, 50)] + 0.8 * gap + 0.1 * rng.standard_normal((50, d)))
    return xb, xt


def _store(home: Home, xb: np.ndarray, per_shard: int = 1500) -> list[tuple[int, str, str, int]]:
    """Write ``xb`` as shards of ``home``; returns (catalog id, shard_dir, shard, row) locations (ids 10, 13, ...)."""
    folder = home.root / "shards" / "m" / "run-000001"
    locations = []
    for s, start in enumerate(range(0, len(xb), per_shard)):
        rows = range(start, min(start + per_shard, len(xb)))
        meta = [
            {
                "uri": f"/{i}",
                "sha256": f"{i:064x}",
                "size": 1,
                "mtime": 0.0,
                "width": 1,
                "height": 1,
                "row": r,
            }
            for r, i in enumerate(rows)
        ]
        name = shards.write_shard(
            str(folder), meta, xb[rows.start : rows.stop], [], {"embed_dim": D}, name=f"s{s}"
        )
        locations += [(10 + 3 * i, home.relative(folder), name, r) for r, i in enumerate(rows)]
    return locations


def _mapped_files() -> set[str]:
    return {
        line.split(None, 5)[5]
        for line in Path("/proc/self/maps").read_text().splitlines()
        if len(line.split(None, 5)) == 6
    }


@pytest.fixture
def stored(tmp_path):
    home = Home.resolve(tmp_path / "home").ensure()
    xb, xt = _vectors()
    return home, _store(home, xb), xb, xt


@pytest.mark.parametrize(
    "factory", ["IVF32,SQ8", "IVF32,PQ8x4", pytest.param("IVF32,PQ8x8", marks=pytest.mark.slow)]
)
def test_ondisk_build_answers_like_the_in_memory_build(stored, factory, monkeypatch):
    home, locations, xb, xt = stored
    monkeypatch.setattr(vectors, "BUILD_CHUNK", 600)  # chunks cross shard and block boundaries
    memory = choose_index(N, D, override=factory, storage="memory")
    ondisk = replace(choose_index(N, D, override=factory, storage="ondisk"), block=1100)  # 4 blocks
    assert memory.storage == "memory" and ondisk.ondisk and ondisk.factory == factory
    in_memory = build.build_from_store(home, locations, D, memory)
    staging = versions.new_staging(home, IDENTITY)
    on_disk = build.build_from_store(home, locations, D, ondisk, folder=staging)
    assert on_disk.ntotal == in_memory.ntotal == N
    assert sorted(p.name for p in staging.iterdir()) == ["index.ivfdata"]  # blocks merged and removed
    lists = build.ondisk_lists(on_disk)
    assert lists is not None and Path(lists.filename) == staging / "index.ivfdata"
    code = 8 + (D if "SQ8" in factory else 8 * int(factory[-1]) // 8)  # id + codes: SQ8 or PQ8xBITS
    assert (staging / "index.ivfdata").stat().st_size == N * code
    for index in (in_memory, on_disk):
        set_search_params(index, {"nprobe": 8})
    D0, I0 = in_memory.search(xt, 10)
    D1, I1 = on_disk.search(xt, 10)
    assert set(I1.ravel().tolist()) <= {loc[0] for loc in locations}  # catalog ids, not positions
    assert (I0 == I1).mean() > 0.99
    np.testing.assert_allclose(D1, D0, atol=1e-5)
    if "PQ" in factory:  # the re-ranking path over on-disk candidates
        by_id = {loc[0]: i for i, loc in enumerate(locations)}
        fetch = lambda ids: xb[[by_id[int(i)] for i in ids]]  # noqa: E731
        Dr, Ir = vectors.rerank_search(on_disk, xt, 10, 10, fetch)
        np.testing.assert_array_equal(Ir, vectors.rerank_search(in_memory, xt, 10, 10, fetch)[1])
        np.testing.assert_allclose(
            Dr, (fetch(Ir.ravel()).reshape(len(xt), 10, D) * xt[:, None, :]).sum(-1), atol=1e-5
        )
        truth = np.array([[locations[j][0] for j in row] for row in np.argsort(-(xt @ xb.T), axis=1)[:, :10]])
        assert recall_at(Ir, truth) > recall_at(I1, truth) + 0.1  # exact re-scoring of the candidates


def test_ondisk_version_is_self_contained_and_relocatable(stored, tmp_path):
    home, locations, _, xt = stored
    choice = replace(choose_index(N, D, override="IVF32,SQ8", storage="ondisk"), block=1500)
    staging = versions.new_staging(home, IDENTITY)
    index = build.build_from_store(home, locations, D, choice, folder=staging)
    set_search_params(index, {"nprobe": 8})
    want_d, want_i = index.search(xt, 10)
    version = versions.write_version(
        home, IDENTITY, index, choice.factory, None, search={"params": {"nprobe": 8}}
    )
    assert version.path.name == "v000001" and not staging.exists()  # the staging folder became the version
    assert sorted(p.name for p in version.path.iterdir()) == ["index.faiss", "index.ivfdata", "manifest.json"]
    assert version.manifest["storage"] == "ondisk" and version.manifest["ivfdata"] == "index.ivfdata"
    assert str(staging).encode() not in (version.path / "index.faiss").read_bytes()  # no build path inside
    versions.publish(home, version)
    current = versions.current_version(home)
    assert current.storage == "ondisk"
    np.testing.assert_array_equal(current.load().search(xt, 10)[1], want_i)

    copied = tmp_path / "elsewhere" / "copy"
    shutil.copytree(version.path, copied)
    moved = tmp_path / "moved"
    shutil.move(str(version.path), moved)  # the original location is gone
    for folder in (copied, moved):
        manifest = json.loads((folder / "manifest.json").read_text())
        loaded = versions.IndexVersion(folder, manifest).load()
        assert Path(build.ondisk_lists(loaded).filename) == folder / "index.ivfdata"
        assert str(folder / "index.ivfdata") in _mapped_files()  # read through mmap, not copied
        D1, I1 = loaded.search(xt, 10)
        np.testing.assert_array_equal(I1, want_i)
        np.testing.assert_allclose(D1, want_d, atol=1e-6)


def test_build_ondisk_keeps_c_output_off_stdout(stored, capfd):
    home, locations, _, _ = stored
    choice = choose_index(N, D, override="IVF32,SQ8", storage="ondisk")
    build.build_from_store(home, locations, D, choice, folder=versions.new_staging(home, IDENTITY))
    out, err = capfd.readouterr()
    assert out == "" and "resizing" in err


@pytest.mark.parametrize("factory", ["Flat", "IVF32,SQ8", "HNSW16,Flat"])
def test_large_in_memory_versions_are_memory_mapped(tmp_path, factory, monkeypatch):
    home = Home.resolve(tmp_path).ensure()
    xb, xt = _vectors()
    ids = np.arange(N, dtype=np.int64) * 2 + 5
    built = build.build_index(xb, ids, factory)
    version = versions.write_version(home, IDENTITY, built, factory, None)
    assert version.storage == "memory"
    path = str(version.path / "index.faiss")
    small = version.load()  # below MMAP_MIN_BYTES: read into memory
    assert path not in _mapped_files()
    monkeypatch.setattr(versions, "MMAP_MIN_BYTES", 1)
    mapped = version.load()
    assert path in _mapped_files()
    np.testing.assert_array_equal(mapped.search(xt, 10)[1], small.search(xt, 10)[1])
    if factory == "Flat":
        np.testing.assert_allclose(mapped.reconstruct(int(ids[7])), xb[7], atol=1e-6)


def test_planner_goes_on_disk_when_the_budget_is_small_and_obeys_the_override():
    n, d = 5_000_000, 512
    assert not choose_index(n, d, machine_memory=2**40).ondisk
    assert not choose_index(1_000_000, d, memory_budget=200 * 2**20).ondisk  # PQ codes still fit: in memory
    small = choose_index(n, d, memory_budget=256 * 2**20)
    assert small.ondisk and small.factory.endswith(",SQ8") and small.rerank == 0
    assert small.memory_bytes <= 256 * 2**20 < small.disk_bytes and 10_000 <= small.block < n
    assert "on disk" in small.describe() and "index.ivfdata" in small.describe()
    no_budget = choose_index(n, d, machine_memory=4 * 2**30)  # SQ8 codes exceed half of the machine
    assert no_budget.ondisk and no_budget.memory_bytes <= 2 * 2**30
    with pytest.raises(InputError, match="too small"):
        choose_index(n, d, memory_budget=256 * 2**20, storage="memory")
    with pytest.raises(InputError, match="too small"):
        choose_index(n, d, memory_budget=2**20)
    forced = choose_index(3000, d, storage="ondisk")  # Flat by size, IVF because on disk was asked for
    assert forced.ondisk and forced.factory.startswith("IVF") and forced.block == 3000
    assert choose_index(3000, d, override="IVF16,PQ8x8", storage="ondisk").rerank > 0
    assert not choose_index(n, d, memory_budget=2**40, storage="auto").ondisk
    assert not choose_index(n, d, override="IVF1024,SQ8", storage="memory", memory_budget=2**20).ondisk
    with pytest.raises(InputError, match="IVF"):
        choose_index(3000, d, override="HNSW32,Flat", storage="ondisk")
    with pytest.raises(InputError, match="storage"):
        choose_index(3000, d, storage="cloud")


@pytest.mark.parametrize("factory", ["IVF4,SQ8", "IVF4,PQ4x4"])
def test_ondisk_index_end_to_end(corpus, tiny_model, tmp_path, factory, cli):
    """`--index-storage ondisk` builds, tunes, publishes and serves (mmap; PQ re-ranked); a later
    run with the same catalog keeps it, asking for memory rebuilds it in memory."""
    from vistag import Archive

    home = tmp_path / "home"
    res = cli(
        "index",
        corpus.root,
        "--home",
        home,
        "--model",
        tiny_model,
        "--index-type",
        factory,
        "--index-storage",
        "ondisk",
        "--json",
    )
    assert res.code == 0, res.err
    assert res.json()["index_count"] == len(corpus.good)
    with Archive(home) as archive:
        version = versions.current_version(archive.home)
        assert version.storage == "ondisk" and (version.path / "index.ivfdata").is_file()
        search = version.manifest["search"]
        assert "on disk" in search["plan"] and search["text_recall_at_10"] >= 0.95
        assert (search["rerank"] > 0) == ("PQ" in factory)
        hits = archive.search("a photo of a red circle", k=5)
        assert len(hits) == 5 and str(version.path / "index.ivfdata") in _mapped_files()
        first = archive.similar(hits[0].id, k=3)  # by id: the stored vector comes from the shards
        assert first[0].id == hits[0].id and first[0].score == pytest.approx(
            1.0, abs=1e-5 if "PQ" in factory else 2e-2
        )
        by_path = archive.similar(corpus.good[3], k=1)[0]
        assert by_path.uri == str(corpus.good[3])
    again = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--json")
    assert again.json()["index_version"] is None  # nothing changed: the on-disk version stays
    back = cli(
        "index", corpus.root, "--home", home, "--model", tiny_model, "--index-storage", "memory", "--json"
    )
    assert back.code == 0 and back.json()["index_version"]
    assert versions.current_version(Home.resolve(home)).storage == "memory"


def test_similar_by_id_works_on_in_memory_ivf(corpus, tiny_model, tmp_path):
    """IVF indexes cannot reconstruct by id (no direct map): the searcher reads the stored vector."""
    from vistag import Archive

    with Archive(tmp_path / "home") as archive:
        archive.index([corpus.root], model=tiny_model, index_type="IVF4,SQ8")
        image_id = archive.searcher.image_id(corpus.good[1])
        hit = archive.similar(image_id, k=1)[0]
        assert hit.id == image_id and hit.score == pytest.approx(1.0, abs=2e-2)
