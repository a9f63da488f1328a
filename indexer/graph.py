"""The image kNN graph of an index version, used by ZLaP propagation.

Computed from the version's own vectors and index, then stored beside it as
``knn-<k>.npz`` (written under a temporary name and renamed; the version's other files are
never touched), so later tag runs on the same version reuse it. Exact inner-product search
(``faiss.knn``) when the version's index is exact (``Flat``, up to ``EXACT_MAX`` vectors: an
exact all-pairs search of 100k x 512-d takes about a minute on 2 cores), the version's own ANN
index (HNSW, IVF) above: the propagation graph then has the ANN index's recall. Where FAISS has
a GPU (:mod:`indexer.faiss_gpu`) the graph is exact up to ``GPU_EXACT_MAX`` images whatever the
index, brute force on the GPU. ANN candidates
(``k`` times the version's re-rank factor, at most ``10 k``) are re-scored exactly with the
vectors (SQ8/PQ codes only approximate the similarities), each image is put first as its own
neighbour (as exact search does, and as ZLaP's graph expects), and rows are searched
``SEARCH_ROWS`` at a time, so memory beyond the vectors stays O(N k).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np

from indexer import faiss_gpu
from indexer.versions import IndexVersion

GRAPH_K = 10
SEARCH_ROWS = 65_536  # images searched in the ANN index at once
GATHER = 1 << 24  # most float32 values of candidate vectors gathered at once for exact re-scoring


@dataclass(frozen=True)
class KnnGraph:
    """``ids`` (N,) int64 catalog ids (sorted); ``D``, ``I`` (N, k): similarities and neighbour
    *positions* into ``ids`` (-1 where the ANN search found fewer than k). Each row's own
    position is normally its first neighbour (the database contains the query)."""

    ids: np.ndarray
    D: np.ndarray
    I: np.ndarray

    def first(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(D, I) restricted to the first ``k`` neighbours."""
        return np.ascontiguousarray(self.D[:, :k]), np.ascontiguousarray(self.I[:, :k])


def knn_graph(version: IndexVersion, ids: np.ndarray, xb: np.ndarray, k: int = GRAPH_K) -> KnnGraph:
    """The kNN graph of ``xb`` (N, d) float32 with catalog ``ids`` (N,) sorted; cached in the version."""
    k = max(1, min(k, len(ids)))
    path = version.path / f"knn-{k}.npz"
    if path.exists():
        cached = np.load(path)
        if np.array_equal(cached["ids"], ids):
            return KnnGraph(cached["ids"], cached["D"], cached["I"])
    graph = _compute(version, ids, xb, k)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    with open(tmp, "wb") as fh:
        np.savez(fh, ids=graph.ids, D=graph.D, I=graph.I)
    os.replace(tmp, path)
    return graph


def _compute(version: IndexVersion, ids: np.ndarray, xb: np.ndarray, k: int) -> KnnGraph:
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if version.manifest["index_type"] == "Flat" or faiss_gpu.exact_graph_on_gpu(len(ids)):
        D, I = faiss_gpu.knn(xb, xb, k)
        return KnnGraph(ids, D.astype(np.float32), I.astype(np.int64))
    index = version.load()
    n = len(ids)
    cand = min(n, k * max(1, min(version.rerank, 10)))
    D, I = np.zeros((n, k), np.float32), np.full((n, k), -1, np.int64)
    for a in range(0, n, SEARCH_ROWS):
        _, found = index.search(xb[a : a + SEARCH_ROWS], cand)
        step = max(1, GATHER // (cand * xb.shape[1]))
        for b in range(0, len(found), step):
            rows = np.arange(a + b, a + min(b + step, len(found)))
            D[rows], I[rows] = _rescore(ids, xb, rows, found[b : b + step], k)
    return KnnGraph(ids, D, I)


def _rescore(
    ids: np.ndarray, xb: np.ndarray, rows: np.ndarray, found: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarities of ``rows``' candidate catalog ids ``found`` (-1: none); self first."""
    pos = np.searchsorted(ids, found).clip(0, len(ids) - 1)
    ok = (found >= 0) & (ids[pos] == found) & (pos != rows[:, None])
    pos = np.where(ok, pos, rows[:, None])
    q = xb[rows]
    sims = np.where(ok, np.einsum("md,mkd->mk", q, xb[pos]), -np.inf)
    sims = np.concatenate([np.einsum("md,md->m", q, q)[:, None], sims], axis=1)
    pos = np.concatenate([rows[:, None], pos], axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    sims, pos = np.take_along_axis(sims, order, 1), np.take_along_axis(pos, order, 1)
    valid = np.isfinite(sims)
    return np.where(valid, sims, 0.0).astype(np.float32), np.where(valid, pos, -1).astype(np.int64)
