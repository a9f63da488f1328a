"""Tagging at scale: --store-top, chunked scoring and storing, bounded calibration, ANN graphs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.errors import InputError
from query import scoring, tagging
from query.calibration import fit_calibration, sample_rows
from query.inductive import leave_self_out
from query.scoring import TagConfig, best_labels
from query.tagging import tag_corpus
from query.vocab import parse_vocabulary
from vistag import Archive

LABELS = ["red circle", "blue square", "green star", "yellow triangle"]


def _by_image(rows):
    out = {}
    for t in rows:
        out.setdefault(t["image_id"], []).append(t)
    return out


@pytest.mark.parametrize("method", ["zeroshot", "zlap"])
def test_store_top_stores_the_best_rows_of_a_full_run(home_copy, method):
    home, corpus = home_copy
    with Archive(home) as archive:
        full = archive.tag(LABELS, method=method, top=2)
        best = archive.tag(LABELS, method=method, top=2, store_top=2)
        full_rows, best_rows = (
            _by_image(archive.catalog.tags(full.run_id)),
            _by_image(archive.catalog.tags(best.run_id)),
        )
        assert set(full_rows) == set(best_rows) and len(best_rows) == len(corpus.good)
        for image_id, rows in best_rows.items():
            assert [t["rank"] for t in rows] == [0, 1]
            expected = [t for t in full_rows[image_id] if t["rank"] < 2]
            for got, want in zip(rows, expected, strict=True):
                assert got["label"] == want["label"] and got["method"] == want["method"] == method
                assert got["score"] == pytest.approx(want["score"], abs=1e-12)
                assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-12)
            assert rows[0]["score"] >= rows[1]["score"] >= max(t["score"] for t in full_rows[image_id][2:])
        assert best.top == full.top  # what is printed does not depend on what is stored
        params = json.loads((scoring.run_dir(archive.home, best.run_id) / "run.json").read_text())
        assert params["store_top"] == 2


@pytest.mark.parametrize("method", ["zeroshot", "zlap"])
def test_scoring_and_storing_in_chunks_equals_one_block(home_copy, method, monkeypatch):
    home, corpus = home_copy
    calls = []
    with Archive(home) as archive:
        config = TagConfig(tuple(parse_vocabulary(LABELS)), method=method, top=3)
        whole = tag_corpus(archive.home, archive.catalog, archive.searcher, config, chunk=10**6)
        monkeypatch.setattr(scoring, "ROW_BATCH", 7)  # rows go to SQL in batches of at most 7
        add_tags = archive.catalog.add_tags
        monkeypatch.setattr(
            archive.catalog, "add_tags", lambda rows: (calls.append(len(rows)), add_tags(rows))
        )
        small = tag_corpus(archive.home, archive.catalog, archive.searcher, config, chunk=3)
        assert max(calls) <= 7 and sum(calls) == len(corpus.good) * len(LABELS)
        a, b = archive.catalog.tags(whole.run_id), archive.catalog.tags(small.run_id)
        assert len(a) == len(b) == len(corpus.good) * len(LABELS)
        for x, y in zip(a, b, strict=True):
            assert (x["image_id"], x["label"], x["rank"]) == (y["image_id"], y["label"], y["rank"])
            assert x["score"] == pytest.approx(y["score"], abs=1e-9)
            assert x["confidence"] == pytest.approx(y["confidence"], abs=1e-9)
        assert [(r["id"], r["label"]) for r in whole.top] == [(r["id"], r["label"]) for r in small.top]

        scores = tagging.score_corpus(archive.home, archive.catalog, archive.searcher, config)
        one = scores.rows(slice(None))
        blocks = list(scores.chunks(5))
        assert [len(b.ids) for b in blocks] == [5] * (len(one.ids) // 5) + (
            [len(one.ids) % 5] if len(one.ids) % 5 else []
        )
        np.testing.assert_array_equal(np.concatenate([b.ids for b in blocks]), one.ids)
        np.testing.assert_allclose(np.concatenate([b.scores for b in blocks]), one.scores, rtol=0, atol=1e-9)
        np.testing.assert_allclose(
            np.concatenate([b.confidence for b in blocks]), one.confidence, rtol=0, atol=1e-9
        )
        picked = scores.rows(np.array([4, 0, 2]))
        np.testing.assert_array_equal(picked.ids, one.ids[[4, 0, 2]])
        np.testing.assert_allclose(picked.scores, one.scores[[4, 0, 2]], rtol=0, atol=1e-9)


def test_store_top_through_the_cli_and_for_new_images(corpus, tiny_model, tmp_path, cli):
    home = tmp_path / "home"
    assert cli("index", corpus.root, "--home", home, "--model", tiny_model).code == 0
    res = cli(
        "tag",
        "--labels",
        ",".join(LABELS),
        "--method",
        "zlap",
        "--store-top",
        1,
        "--top",
        2,
        "--home",
        home,
        "--json",
    )
    assert res.code == 0, res.err
    printed = res.json()
    assert {r["rank"] for r in printed} == {0, 1}  # --top still prints two labels per image
    with Archive(home) as archive:
        run_id = archive.catalog.latest_tag_run()
        rows = archive.catalog.tags(run_id)
        assert len(rows) == len(corpus.good) and {t["rank"] for t in rows} == {0}
        best = {r["id"]: r["label"] for r in printed if r["rank"] == 0}
        assert {t["image_id"]: t["label"] for t in rows} == best
    shutil.copy(corpus.good[0], corpus.root / "again.png")
    assert cli("index", corpus.root, "--home", home, "--model", tiny_model).code == 0
    with Archive(home) as archive:
        new = archive.catalog.image(str(corpus.root / "again.png"))["id"]
        rows = archive.catalog.tags(run_id, image_ids=[new])
        assert len(rows) == 1 and rows[0]["method"] == "zlap-inductive" and rows[0]["rank"] == 0
    explained = cli("explain", corpus.good[0], "--home", home, "--json").json()
    assert len([r for r in explained if r["run_id"] == run_id]) == 1
    res = cli("tag", "--labels", ",".join(LABELS), "--store-top", 3, "--home", home)
    assert res.code == 0 and "best 3 of 4 labels stored" in res.err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "--store-top must be a whole number of labels, at least 1"),
        (-3, "--store-top must be a whole number of labels, at least 1"),
        (5, "--store-top 5 is more than the 4 labels"),
    ],
)
def test_bad_store_top_is_a_one_line_error(indexed_home, cli, value, message):
    home, _ = indexed_home
    res = cli("tag", "--labels", ",".join(LABELS), "--store-top", value, "--home", home)
    assert res.code == 2 and message in res.err
    assert res.err.count("\n") == 1 and res.out == ""


def test_bad_store_top_through_the_api(indexed_home):
    home, _ = indexed_home
    with Archive(home) as archive:
        runs = len(archive.catalog.runs())
        for bad in (1.5, True, "2"):
            with pytest.raises(InputError, match="store-top"):
                archive.tag(LABELS, store_top=bad)
        assert len(archive.catalog.runs()) == runs  # rejected before a run is started


def test_best_labels_equals_a_stable_full_sort():
    rng = np.random.default_rng(0)
    for c in (3, 10, 200):
        scores = rng.normal(size=(300, c)).round(1)  # many exact ties, also across the cut
        scores[::7] = 0.5  # whole rows tied
        full = np.argsort(-scores, axis=1, kind="stable")
        for n in sorted({1, 2, 5, c // 2, c}):
            np.testing.assert_array_equal(best_labels(scores, min(n, c)), full[:, : min(n, c)])


def test_calibration_from_a_sample_and_in_label_blocks(monkeypatch):
    rng = np.random.default_rng(1)
    scores = rng.normal(0.2, 0.03, (500, 12)) + np.eye(12)[rng.integers(0, 12, 500)] * 0.05
    whole = fit_calibration(scores, max_rows=120)
    sample = sample_rows(len(scores), 120)
    assert len(sample) == 120 and len(set(sample.tolist())) == 120
    sampled = fit_calibration(scores[sample], max_rows=120)  # what score_corpus does: score just the sample
    for name in ("mean", "std", "a", "b"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(sampled, name))
    assert sample_rows(100, 120) == slice(None)
    from query import calibration

    monkeypatch.setattr(calibration, "BLOCK_ELEMENTS", 500 * 5)  # five labels per block
    blocked = fit_calibration(scores)
    monkeypatch.undo()
    reference = fit_calibration(scores)
    np.testing.assert_allclose(blocked.apply(scores), reference.apply(scores), rtol=0, atol=1e-8)
    cols = best_labels(scores, 3)
    for log in (False, True):  # confidences of picked entries only, as a top-N run computes them
        cal = fit_calibration(np.abs(scores), log=log)
        picked = cal.apply_at(np.take_along_axis(np.abs(scores), cols, 1), cols)
        np.testing.assert_array_equal(picked, np.take_along_axis(cal.apply(np.abs(scores)), cols, 1))


def test_leave_self_out_matches_the_row_loop():
    from indexer.graph import KnnGraph

    rng = np.random.default_rng(2)
    n, width, k = 40, 6, 5
    I = np.stack([rng.permutation(n)[:width] for _ in range(n)])
    I[::3, 0] = np.arange(n)[::3]  # self first on some rows, elsewhere or absent on others
    I[1::5, 3] = np.arange(n)[1::5]
    I[2::9, 4] = -1  # an ANN miss
    D = rng.random((n, width)).astype(np.float32)
    graph = KnnGraph(np.arange(100, 100 + n), D, I)
    want_d, want_i = np.zeros((n, k), np.float32), np.full((n, k), -1)
    for r in range(n):  # the former per-row loop
        keep = I[r] != r
        d, i = D[r][keep][:k], I[r][keep][:k]
        want_d[r, : len(d)], want_i[r, : len(i)] = d, i
    got_d, got_i = leave_self_out(graph, k)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_d, want_d)
    rows = np.array([7, 3, 30])
    sub_d, sub_i = leave_self_out(graph, k, rows)
    np.testing.assert_array_equal(sub_i, want_i[rows])
    np.testing.assert_array_equal(sub_d, want_d[rows])


def test_ann_graph_rescores_exactly_and_puts_self_first(tmp_path):
    import faiss

    from indexer import graph as graphs
    from indexer.versions import IndexVersion

    rng = np.random.default_rng(3)
    n, d = 600, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(10, 10 + 3 * n, 3, dtype=np.int64)  # catalog ids are not positions
    index = faiss.IndexIDMap(faiss.index_factory(d, "IVF8,SQ8", faiss.METRIC_INNER_PRODUCT))
    index.train(x)
    index.add_with_ids(x, ids)
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    version = IndexVersion(tmp_path, {"index_type": "IVF8,SQ8", "search": {"params": {"nprobe": 8}}})
    old = graphs.SEARCH_ROWS, graphs.GATHER
    graphs.SEARCH_ROWS, graphs.GATHER = 128, 50 * d * 3  # several searches and gathers
    try:
        got = graphs.knn_graph(version, ids, x, k=5)
    finally:
        graphs.SEARCH_ROWS, graphs.GATHER = old
    np.testing.assert_array_equal(got.I[:, 0], np.arange(n))  # self first
    exact = np.einsum("nd,nkd->nk", x, x[got.I])
    np.testing.assert_allclose(got.D, exact, atol=1e-6)  # exact similarities, not SQ8 codes
    assert np.all(np.diff(got.D, axis=1) <= 1e-7)
    d_true, i_true = faiss.knn(x, x, 5, metric=faiss.METRIC_INNER_PRODUCT)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got.I, i_true, strict=True)])
    assert recall > 0.95  # nprobe = nlist: only SQ8's ordering errors, fixed by re-scoring
    assert (tmp_path / "knn-5.npz").exists()


def test_storing_every_score_past_the_limit_needs_store_all(home_copy, cli, monkeypatch):
    """A full run above FULL_ROWS_MAX tag rows is refused before it starts, with the way out."""
    monkeypatch.setattr(tagging, "FULL_ROWS_MAX", 10)
    home, corpus = home_copy
    truth = home.parent / "truth.csv"
    truth.write_text("uri,label\n" + "".join(f"{p},{LABELS[i % 4]}\n" for i, p in enumerate(corpus.good)))
    with Archive(home) as archive:
        images = int(tagging_version_count(archive))
        runs = len(archive.catalog.runs())
        with pytest.raises(InputError, match=f"{images * len(LABELS):,} tag rows .* --store-top N"):
            archive.tag(LABELS)
        assert len(archive.catalog.runs()) == runs  # nothing was started
        report = archive.evaluate(str(truth), LABELS, methods=("zeroshot",))  # stores nothing: no limit
        assert report["methods"]["zeroshot"]["images"] > 0
        with pytest.raises(InputError, match="exclude each other"):
            archive.tag(LABELS, store_top=2, store_all=True)
        full = archive.tag(LABELS, store_all=True)
        assert len(archive.catalog.tags(full.run_id)) == images * len(LABELS)
        best = archive.tag(LABELS, store_top=1)
        assert len(archive.catalog.tags(best.run_id)) == images
    res = cli("tag", "--labels", ",".join(LABELS), "--home", home)
    assert res.code == 2 and "--store-all" in res.err and res.err.count("\n") == 1
    res = cli("tag", "--labels", ",".join(LABELS), "--home", home, "--store-all", "--json")
    assert res.code == 0 and len(res.json()) > 0


def tagging_version_count(archive):
    from indexer import versions

    return versions.current_version(archive.home).manifest["count"]
