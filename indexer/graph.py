"""The image kNN graph of an index version, used by ZLaP propagation.

Computed from the version's own vectors and index, then stored beside it as
``knn-<k>.npz`` (written under a temporary name and renamed; the version's other files are
never touched), so later tag runs on the same version reuse it. Exact inner-product search
(``faiss.knn``) when the version's index is exact (``Flat``, up to ``EXACT_MAX`` vectors: an
exact all-pairs search of 100k x 512-d takes about a minute on 2 cores), the version's own ANN
index (HNSW, IVF) above: the propagation graph then has the ANN index's recall.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np

from indexer.index import IndexVersion

GRAPH_K = 10


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
    import faiss

    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if version.manifest["index_type"] == "Flat":
        D, I = faiss.knn(xb, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
        return KnnGraph(ids, D.astype(np.float32), I.astype(np.int64))
    D, found = version.load().search(xb, k)
    pos = np.searchsorted(ids, found).clip(0, len(ids) - 1)
    ok = (found >= 0) & (ids[pos] == found)
    return KnnGraph(ids, np.where(ok, D, 0.0).astype(np.float32), np.where(ok, pos, -1).astype(np.int64))
