"""FAISS on the GPU (indexer.faiss_gpu): the switch, the training hook, and the routing of bulk work.

Without a GPU these run the CPU path for real and the GPU routing with a CPU stand-in for the two
GPU calls (the k-means assignment index, ``knn_gpu``), so what vistag does around them is tested
here; the tests marked ``faiss_cuda`` compare real GPU results with CPU ones and run only where
the installed FAISS sees a GPU.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from core.errors import InputError
from indexer import faiss_gpu
from indexer import graph as graphs
from indexer.build import build_from_chunks, build_index
from indexer.choice import choose_index
from indexer.versions import IndexVersion
from query import zlap

faiss_cuda = pytest.mark.skipif(faiss_gpu.gpu_count() == 0, reason="needs FAISS with GPU support and a GPU")


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _centroids(index) -> np.ndarray:
    q = faiss.extract_index_ivf(index).quantizer
    return q.reconstruct_n(0, q.ntotal)


def test_switch_reads_the_environment(monkeypatch):
    monkeypatch.setattr(faiss_gpu, "gpu_count", lambda: 0)
    for off in ("0", "off", "cpu"):
        monkeypatch.setenv(faiss_gpu.ENV, off)
        assert faiss_gpu.use_gpu() is False
    monkeypatch.delenv(faiss_gpu.ENV, raising=False)
    assert faiss_gpu.use_gpu() is False  # auto, and FAISS sees no GPU
    monkeypatch.setenv(faiss_gpu.ENV, "1")
    with pytest.raises(InputError, match="sees no GPU"):
        faiss_gpu.use_gpu()
    monkeypatch.setenv(faiss_gpu.ENV, "sometimes")
    with pytest.raises(InputError, match="expected auto, 0 or 1"):
        faiss_gpu.use_gpu()
    monkeypatch.setattr(faiss_gpu, "gpu_count", lambda: 2)
    monkeypatch.setenv(faiss_gpu.ENV, "auto")
    assert faiss_gpu.use_gpu() is True
    monkeypatch.setenv(faiss_gpu.ENV, "0")
    assert faiss_gpu.use_gpu() is False  # off wins over a present GPU


def test_installed_faiss_is_asked_for_gpus():
    # faiss-cpu has no GPU classes: 0; a GPU build answers get_num_gpus() (0 on this machine)
    expected = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    assert faiss_gpu.gpu_count() == expected


def test_training_hook_gives_the_same_centroids_and_is_detached_after():
    x = _unit(np.random.default_rng(0), 3000, 32)
    plain = faiss.index_factory(32, "IVF16,SQ8", faiss.METRIC_INNER_PRODUCT)
    plain.train(x)
    hooked = faiss.index_factory(32, "IVF16,SQ8", faiss.METRIC_INNER_PRODUCT)
    helper = faiss.IndexFlat(32, faiss.METRIC_INNER_PRODUCT)
    with faiss_gpu.ivf_training(hooked, assign=helper) as used:
        assert used
        hooked.train(x)
    assert helper.ntotal == 16  # the k-means assigned through the helper: it holds the centroids
    np.testing.assert_array_equal(_centroids(hooked), _centroids(plain))
    assert faiss.extract_index_ivf(hooked).clustering_index is None
    again = faiss.deserialize_index(faiss.serialize_index(hooked))  # an ordinary CPU index
    np.testing.assert_array_equal(_centroids(again), _centroids(plain))


def test_training_hook_leaves_other_indexes_and_the_cpu_path_alone(monkeypatch):
    monkeypatch.setattr(faiss_gpu, "use_gpu", lambda: False)
    for factory in ("Flat", "HNSW8,Flat"):
        with faiss_gpu.ivf_training(faiss.index_factory(8, factory)) as used:
            assert not used
    with faiss_gpu.ivf_training(faiss.index_factory(8, "IVF4,Flat")) as used:
        assert not used  # no GPU: plain CPU training


@pytest.fixture
def fake_gpu(monkeypatch):
    """The GPU path with CPU stand-ins for the two GPU calls; records what went through them."""
    calls: dict[str, list] = {"assign": [], "knn": []}

    def assign(d, metric):
        calls["assign"].append((d, metric))
        return faiss.IndexFlat(d, metric)

    def knn(xq, xb, k, metric):
        calls["knn"].append((len(xq), len(xb), k))
        return faiss.knn(xq, xb, k, metric=metric)

    monkeypatch.setattr(faiss_gpu, "use_gpu", lambda: True)
    monkeypatch.setattr(faiss_gpu, "_gpu_assign_index", assign)
    monkeypatch.setattr(faiss_gpu, "_knn_gpu", knn)
    return calls


def test_index_builds_train_through_the_gpu_hook(fake_gpu):
    rng = np.random.default_rng(1)
    x, ids = _unit(rng, 4000, 32), np.arange(4000, dtype=np.int64) * 7
    choice = choose_index(len(x), 32, override="IVF32,SQ8", storage="memory")
    built = build_from_chunks(32, choice, lambda: x[:2000], [(ids[:2500], x[:2500]), (ids[2500:], x[2500:])])
    assert fake_gpu["assign"] == [(32, faiss.METRIC_INNER_PRODUCT)]
    assert built.ntotal == 4000 and faiss.extract_index_ivf(built).clustering_index is None
    reference = faiss.index_factory(32, "IVF32,SQ8", faiss.METRIC_INNER_PRODUCT)
    reference.train(x[:2000])  # the same sample without the hook: the same centroids
    np.testing.assert_array_equal(_centroids(built), _centroids(reference))
    small = build_index(x[:500], ids[:500], "IVF8,Flat")
    assert len(fake_gpu["assign"]) == 2 and small.ntotal == 500


def test_graph_of_an_ivf_version_is_exact_on_a_gpu(fake_gpu, tmp_path):
    rng = np.random.default_rng(2)
    n, d, k = 800, 16, 6
    x = _unit(rng, n, d)
    ids = np.arange(5, 5 + 2 * n, 2, dtype=np.int64)
    index = faiss.IndexIDMap(faiss.index_factory(d, "IVF16,PQ4", faiss.METRIC_INNER_PRODUCT))
    index.train(x)
    index.add_with_ids(x, ids)
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    version = IndexVersion(tmp_path, {"index_type": "IVF16,PQ4", "search": {"params": {"nprobe": 1}}})
    got = graphs.knn_graph(version, ids, x, k=k)
    assert fake_gpu["knn"] == [(n, n, k)]  # one exact pass, not the (lossy, nprobe 1) IVF index
    d_true, i_true = faiss.knn(x, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_array_equal(got.I, i_true)
    np.testing.assert_allclose(got.D, d_true, rtol=0, atol=1e-6)


def test_graph_above_the_gpu_limit_uses_the_index(fake_gpu, tmp_path, monkeypatch):
    monkeypatch.setattr(faiss_gpu, "GPU_EXACT_MAX", 100)
    rng = np.random.default_rng(4)
    x = _unit(rng, 300, 8)
    ids = np.arange(300, dtype=np.int64)
    index = faiss.IndexIDMap(faiss.index_factory(8, "IVF4,Flat", faiss.METRIC_INNER_PRODUCT))
    index.train(x)
    index.add_with_ids(x, ids)
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    version = IndexVersion(tmp_path, {"index_type": "IVF4,Flat", "search": {"params": {"nprobe": 4}}})
    got = graphs.knn_graph(version, ids, x, k=4)
    assert fake_gpu["knn"] == []
    np.testing.assert_array_equal(got.I[:, 0], np.arange(300))


def test_zlap_knn_goes_through_the_switch(fake_gpu):
    rng = np.random.default_rng(5)
    xq, xb = _unit(rng, 20, 8), _unit(rng, 50, 8)
    dist, idx = zlap.exact_knn(xq, xb, 3)
    assert fake_gpu["knn"] == [(20, 50, 3)]
    assert dist.dtype == np.float64 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, faiss.knn(xq, xb, 3, metric=faiss.METRIC_INNER_PRODUCT)[1])
    faiss_gpu.knn(xq, xb, faiss_gpu.GPU_MAX_K + 1)  # past FAISS's GPU k limit: the CPU answers
    assert len(fake_gpu["knn"]) == 1


@faiss_cuda
def test_gpu_knn_matches_cpu():
    x = _unit(np.random.default_rng(6), 20_000, 64)
    d_gpu, i_gpu = faiss_gpu._knn_gpu(x[:2000], x, 10, faiss.METRIC_INNER_PRODUCT)
    d_cpu, i_cpu = faiss.knn(x[:2000], x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_allclose(d_gpu, d_cpu, atol=1e-4)
    assert np.mean(i_gpu == i_cpu) > 0.99  # ties and float order aside


@faiss_cuda
def test_gpu_trained_ivf_has_the_recall_of_a_cpu_trained_one():
    rng = np.random.default_rng(7)
    x, q = _unit(rng, 50_000, 64), _unit(rng, 500, 64)
    truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    recalls = []
    for gpu in (True, False):
        index = faiss.index_factory(64, "IVF256,SQ8", faiss.METRIC_INNER_PRODUCT)
        if gpu:
            with faiss_gpu.ivf_training(index) as used:
                assert used
                index.train(x[:20_000])
        else:
            index.train(x[:20_000])
        index.add(x)
        faiss.extract_index_ivf(index).nprobe = 16
        found = index.search(q, 10)[1]
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
    assert abs(recalls[0] - recalls[1]) < 0.02, recalls


def test_cli_stops_at_once_when_the_gpu_is_required_but_missing(
    cli, tmp_path, corpus, tiny_model, monkeypatch
):
    monkeypatch.setattr(faiss_gpu, "gpu_count", lambda: 0)
    monkeypatch.setenv(faiss_gpu.ENV, "1")
    out = cli("index", str(corpus.root), "--home", tmp_path / "home", "--model", tiny_model)
    assert out.code != 0 and "sees no GPU" in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "index").exists()  # nothing was run


def test_dry_run_names_the_gpu_for_an_approximate_index(cli, tmp_path, corpus, tiny_model, monkeypatch):
    monkeypatch.setattr(faiss_gpu, "gpu_count", lambda: 2)
    monkeypatch.setenv(faiss_gpu.ENV, "auto")
    out = cli(
        "index",
        str(corpus.root),
        "--home",
        tmp_path,
        "--model",
        tiny_model,
        "--dry-run",
        "--index-type",
        "IVF4,Flat",
    )
    assert out.code == 0 and "FAISS on 2 GPU(s)" in out.out
    out = cli("index", str(corpus.root), "--home", tmp_path, "--model", tiny_model, "--dry-run")
    assert out.code == 0 and "Flat" in out.out and "GPU" not in out.out  # exact: nothing to train
