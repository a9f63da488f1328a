"""Index planning (exact / IVF-SQ8 / IVF-PQ with re-ranking) and recall tuning with text queries."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from indexer import build, vectors, versions
from indexer.choice import choose_index, recall_at, tune
from indexer.home import Home
from pipeline import shards


def _norm(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n=20_000, d=64, clusters=200, seed=0):
    """Clustered image vectors and text-like queries offset from the clusters (a modality gap)."""
    rng = np.random.default_rng(seed)
    centres = _norm(rng.standard_normal((clusters, d)))
    xb = _norm(centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)))
    gap = _norm(rng.standard_normal((1, d)))
    xt = _norm(
        0.5 * centres[rng.integers(0, clusters, 100)] + 0.8 * gap + 0.1 * rng.standard_normal((100, d))
    )
    return xb, xt, xb[rng.choice(n, 100, replace=False)]


def test_plan_rules():
    assert choose_index(50_000, 512).factory == "Flat"
    big = choose_index(1_000_000, 512)
    assert big.factory.startswith("IVF") and big.factory.endswith("SQ8") and big.rerank == 0
    assert big.memory_bytes < 1_000_000 * 512 * 4 / 3
    tight = choose_index(1_000_000, 512, memory_budget=200 * 2**20)
    assert "PQ64x8" in tight.factory and tight.rerank > 0 and tight.memory_bytes <= 200 * 2**20
    assert choose_index(50_000, 512, memory_budget=40 * 2**20).factory.endswith("SQ8")  # Flat does not fit
    with pytest.raises(InputError, match="too small"):
        choose_index(1_000_000, 512, memory_budget=2**20)
    assert choose_index(10, 512, override="HNSW32,Flat").factory == "HNSW32,Flat"
    assert "re-rank" in tight.describe() and "MiB" in big.describe()


def test_plan_says_why_not_hnsw():
    big = choose_index(1_000_000, 512)
    assert big.passed_over.startswith("HNSW32") and "text queries" in big.passed_over
    assert "; not HNSW32" in big.describe()
    budget = choose_index(1_000_000, 512, memory_budget=800 * 2**20)  # SQ8 fits, HNSW's vectors do not
    assert budget.factory.endswith("SQ8") and "exceed the memory budget" in budget.passed_over
    assert choose_index(50_000, 512).passed_over == ""  # exact: nothing was weighed against it
    assert choose_index(10, 512, override="HNSW32,Flat").passed_over == ""


@pytest.mark.parametrize("factory", ["IVF128,SQ8", "HNSW16,Flat"])
def test_tuning_reaches_target_recall_for_text_and_image_queries(factory):
    xb, xt, xi = synthetic()
    ids = np.arange(len(xb), dtype=np.int64) + 1
    choice = choose_index(len(xb), xb.shape[1], override=factory)
    index = build.build_index(xb, ids, factory)
    exact = build.build_index(xb, ids, "Flat")
    queries = {"text": (xt, exact.search(xt, 10)[1]), "image": (xi, exact.search(xi, 10)[1])}
    param = "nprobe" if "IVF" in factory else "efSearch"
    tuning = tune(index, choice, lambda xq, k, rerank: index.search(xq, k)[1], queries)
    assert tuning.text_recall >= 0.95 and tuning.image_recall >= 0.95
    assert set(tuning.search) == {param}
    # the tuned value is the smallest that reaches the target: one step lower misses it for some set
    low = {"nprobe": 1, "efSearch": 4}[param]
    from indexer.choice import set_search_params

    set_search_params(index, {param: low})
    assert min(recall_at(index.search(q, 10)[1], t) for q, t in queries.values()) < 0.95


def test_pq_codes_need_reranking_for_text_queries():
    xb, xt, _ = synthetic(d=64)
    ids = np.arange(len(xb), dtype=np.int64)
    pq = build.build_index(xb, ids, "IVF64,PQ8x8")
    from indexer.choice import set_search_params

    set_search_params(pq, {"nprobe": 64})
    truth = build.build_index(xb, ids, "Flat").search(xt, 10)[1]
    plain = recall_at(pq.search(xt, 10)[1], truth)
    reranked = recall_at(vectors.rerank_search(pq, xt, 10, 10, lambda i: xb[i])[1], truth)
    assert plain < 0.5 and reranked > plain + 0.2
    choice = choose_index(len(xb), 64, override="IVF64,PQ8x8")
    tuning = tune(
        pq,
        choice,
        lambda xq, k, r: vectors.rerank_search(pq, xq, k, r, lambda i: xb[i])[1],
        {"text": (xt, truth)},
    )
    assert tuning.text_recall >= 0.95 and tuning.search["rerank"] > 10  # deeper re-ranking was needed


def test_build_from_store_and_exact_search_stream_the_shards(tmp_path):
    xb, xt, _ = synthetic(n=3000, d=16)
    home = Home.resolve(tmp_path).ensure()
    folder = home.root / "shards" / "m" / "run-000001"
    model = {"embed_dim": 16}
    locations = []
    for s, start in enumerate(range(0, 3000, 1000)):
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
            for r, i in enumerate(range(start, start + 1000))
        ]
        name = shards.write_shard(str(folder), meta, xb[start : start + 1000], [], model, name=f"s{s}")
        locations += [
            (i + 1, home.relative(folder), name, r) for r, i in enumerate(range(start, start + 1000))
        ]
    old_chunk = vectors.BUILD_CHUNK
    vectors.BUILD_CHUNK = 700  # several chunks, crossing shard boundaries
    try:
        choice = choose_index(3000, 16, override="IVF16,SQ8")
        index = build.build_from_store(home, locations, 16, choice)
        D, I = vectors.exact_search(home, locations, 16, xt, 5)
    finally:
        vectors.BUILD_CHUNK = old_chunk
    assert index.ntotal == 3000
    brute = np.argsort(-(xt @ xb.T), axis=1)[:, :5] + 1
    assert (I == brute).mean() > 0.99
    np.testing.assert_allclose(D, np.sort(xt @ xb.T, axis=1)[:, ::-1][:, :5], atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF4,SQ8", "IVF4,PQ4x4"])
def test_approximate_index_end_to_end(corpus, tiny_model, tmp_path, factory, monkeypatch):
    """--index-type builds, tunes with text queries from the model, and serves (re-ranking PQ,
    with the version's own vector table: no catalog query per search)."""
    from core.errors import NotFound
    from vistag import Archive

    with Archive(tmp_path / "home") as archive:
        archive.index([corpus.root], model=tiny_model, index_type=factory)
        version = versions.current_version(archive.home)
        manifest, search = version.manifest, version.manifest["search"]
        assert manifest["index_type"] == factory and "nprobe" in search["params"]
        assert search["text_recall_at_10"] >= 0.95 and search["image_recall_at_10"] >= 0.95
        assert search["recall_queries"]["text"] >= 60
        assert (search["rerank"] > 0) == ("PQ" in factory)
        table = version.vector_table(archive.home)
        assert (table is not None) == ("PQ" in factory)
        if table is not None:
            ids = [r["id"] for r in archive.catalog.images()][::-1]
            want = vectors.stored_vectors(archive.home, archive.catalog, version.identity, ids)
            np.testing.assert_array_equal(table.fetch(np.array(ids)), want)
            with pytest.raises(NotFound):  # an id, not an index, is missing
                table.fetch(np.array([max(ids) + 1000]))

            def no_sql(*args):
                raise AssertionError("re-ranking went to the catalog")

            with monkeypatch.context() as m:
                m.setattr(vectors, "stored_vectors", no_sql)
                hits = archive.searcher.search_vectors(want[:1], k=3)[0]
            assert hits[0].id == ids[0] and hits[0].score == pytest.approx(1.0, abs=1e-5)
            for name in (table.IDS, table.AT, table.NAMES):  # a version written before the table
                (version.path / name).unlink()
            from query.search import Searcher

            old = Searcher(archive.home, archive.catalog).search_vectors(want[:1], k=3)[0]
            assert [(h.id, h.score) for h in old] == [(h.id, h.score) for h in hits]  # through the catalog
        hit = archive.similar(corpus.good[2], k=1)[0]
        assert hit.uri == str(corpus.good[2]) and hit.score == pytest.approx(
            1.0, abs=1e-3 if "PQ" not in factory else 1e-5
        )


def test_untrainable_index_type_is_a_clear_error(corpus, tiny_model, tmp_path, cli):
    res = cli(
        "index", corpus.root, "--home", tmp_path / "h", "--model", tiny_model, "--index-type", "IVF4,PQ4x8"
    )
    assert res.code == 2 and "cannot train IVF4,PQ4x8" in res.err and res.err.count("\n") == 1


def _cost(d: int) -> float:
    return 1e-4  # ms per stored vector: 100,000 vectors -> 10 ms


def test_latency_target_decides_between_exact_and_inverted_lists():
    from indexer.choice import choose_index

    near = choose_index(150_000, 512, latency_ms=20, exact_cost=_cost)  # 15 ms: exact beyond EXACT_MAX
    assert near.exact and "15.0 ms" in near.reason and "within the 20 ms target" in near.reason
    far = choose_index(50_000, 512, latency_ms=1, exact_cost=_cost)  # 5 ms: approximate below EXACT_MAX
    assert (
        far.factory.startswith("IVF")
        and far.factory.endswith(",SQ8")
        and "over the 1 ms target" in far.reason
    )
    # the memory budget still wins over a generous latency target, and overrides win over both
    tight = choose_index(150_000, 512, latency_ms=1000, memory_budget=100 * 2**20, exact_cost=_cost)
    assert not tight.exact and tight.memory_bytes <= 100 * 2**20
    assert choose_index(1000, 512, latency_ms=1e-9, override="Flat", exact_cost=_cost).exact


def test_latency_target_must_be_positive():
    from core.errors import InputError
    from indexer.choice import choose_index

    for bad in (0, -5.0, float("nan")):
        with pytest.raises(InputError, match="latency target"):
            choose_index(1000, 64, latency_ms=bad, exact_cost=_cost)


def test_exact_cost_is_measured_once_per_dimension():
    from indexer import choice

    first = choice.exact_ms_per_vector(64, sample=4000)
    assert 0 < first < 1  # under a millisecond per 64-d vector on any machine
    assert choice.exact_ms_per_vector(64) == first  # cached


def test_cli_dry_run_reports_the_latency_estimate(cli, corpus, tiny_model, tmp_path):
    res = cli(
        "index",
        corpus.root,
        "--home",
        tmp_path / "h",
        "--model",
        tiny_model,
        "--dry-run",
        "--latency-target",
        "50",
    )
    assert res.code == 0, res.err
    assert "exact search estimated at" in res.out and "within the 50 ms target" in res.out
    bad = cli(
        "index",
        corpus.root,
        "--home",
        tmp_path / "h",
        "--model",
        tiny_model,
        "--dry-run",
        "--latency-target",
        "0",
    )
    assert bad.code == 2 and "latency target must be more than 0 ms" in bad.err
