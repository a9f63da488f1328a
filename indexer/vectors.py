"""The stored vectors of an archive: gathered from the shards by catalog location, looked up by id
through a version's :class:`VectorTable`, searched exactly, and used to re-rank a lossy index's
candidates.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from core.errors import (
    ShardFormatError,
)
from core.models import ModelIdentity
from indexer.catalog import Catalog
from indexer.home import Home
from pipeline import shards

BUILD_CHUNK = 100_000


def exact_search(
    home: Home, locations: Sequence[tuple[int, str, str, int]], dim: int, xq: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``xq`` (Q, d) over the stored vectors, streamed by chunk.

    Returns D (Q, k) float32 and I (Q, k) int64 catalog ids (-1 where fewer than k exist)."""
    import faiss

    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    for start in range(0, len(locations), BUILD_CHUNK):
        ids, xb = gather_vectors(home, locations[start : start + BUILD_CHUNK], dim)
        with blas_for_few_queries():
            D, I = faiss.knn(
                np.ascontiguousarray(xq, dtype=np.float32),
                xb,
                min(k, len(xb)),
                metric=faiss.METRIC_INNER_PRODUCT,
            )
        pad = k - D.shape[1]
        if pad:
            D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
        heap.add_result(D, np.where(I >= 0, ids[np.maximum(I, 0)], -1))
    heap.finalize()
    return heap.D, heap.I


@contextlib.contextmanager
def blas_for_few_queries() -> Iterator[None]:
    """Exact search of a few hundred queries through BLAS. FAISS 1.15 uses BLAS only from 128,000
    queries on (``distance_compute_blas_threshold``); below, its scan of a 100,000 x 512 chunk
    for 200 queries took 1.4 s on 2 cores against 0.15 s through BLAS."""
    import faiss

    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def only_ids(index: Any, ids: np.ndarray) -> Any:
    """FAISS search parameters that restrict a search of ``index`` to the catalog ``ids`` (n,) int64,
    keeping the index's own ``nprobe`` / ``efSearch`` (an IVF or HNSW index refuses plain
    ``SearchParameters``). Exact for any filter, however selective."""
    import faiss

    sel = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch)
    return faiss.SearchParameters(sel=sel)


def rerank_search(
    index: Any,
    xq: np.ndarray,
    k: int,
    factor: int,
    fetch: Callable[[np.ndarray], np.ndarray],
    params: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``factor * k`` candidates with the (lossy) index (``params``: FAISS search parameters,
    such as :func:`only_ids`'), re-score them exactly.

    ``fetch(ids)`` returns the stored (len(ids), d) float32 vectors of catalog ids."""
    D, I = index.search(xq, k * factor, params=params)
    out_d, out_i = np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
    for q in range(len(xq)):
        cand = I[q][I[q] >= 0]
        if not len(cand):
            continue
        # einsum, not ``@``: a BLAS call right after FAISS's OpenMP search made the two thread
        # pools wait on each other (8 ms instead of 1.1 ms for 1,000 candidates on 2 cores)
        exact = np.einsum("ij,j->i", fetch(cand), xq[q])
        order = np.argsort(-exact, kind="stable")[:k]
        out_d[q, : len(order)], out_i[q, : len(order)] = exact[order], cand[order]
    return out_d, out_i


def gather_vectors(
    home: Home, locations: Sequence[tuple[int, str, str, int]], dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read the vectors at (image id, shard_dir, shard, row) locations.

    Returns ids (n,) int64 and vectors (n, dim) float32 in the order of ``locations``; shards are
    memory-mapped and each is opened once.
    """
    ids = np.fromiter((loc[0] for loc in locations), dtype=np.int64, count=len(locations))
    xb = np.empty((len(locations), dim), dtype=np.float32)
    by_shard: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for pos, (_, shard_dir, shard, row) in enumerate(locations):
        by_shard[(shard_dir, shard)].append((pos, row))
    for (shard_dir, shard), items in by_shard.items():
        matrix = shards.read_embeddings(home.absolute(shard_dir), shard)
        positions = np.array([p for p, _ in items], dtype=np.int64)
        rows = np.array([r for _, r in items], dtype=np.int64)
        if int(rows.max()) >= len(matrix):
            label = shards.shard_label(home.absolute(shard_dir), shard)
            message = f"{label} has {len(matrix)} embeddings; the catalog points at row {rows.max()}"
            raise ShardFormatError(message, label)
        order = np.argsort(rows)
        xb[positions[order]] = matrix[rows[order]]
    return ids, xb


def stored_vectors(home: Home, catalog: Catalog, identity: ModelIdentity, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), d) float32 stored vectors of catalog ``ids`` in that order, deleted images included."""
    locations = catalog.vector_locations(
        catalog.model_id(identity), ids=[int(i) for i in ids], live_only=False
    )
    found, xb = gather_vectors(home, locations, identity.embed_dim)
    position = {int(i): p for p, i in enumerate(found.tolist())}
    return xb[[position[int(i)] for i in ids]]


def engines_of(home: Home, locations: Sequence[tuple[int, str, str, int]]) -> list[dict[str, Any]]:
    """What embedded the vectors at ``locations``: one record per engine (see
    :class:`core.engines.EngineInfo`; shards from before engines were recorded are torch's) with
    the number of ``vectors`` it embedded, most vectors first."""
    per_shard: dict[tuple[str, str], int] = defaultdict(int)
    for _, shard_dir, shard, _row in locations:
        per_shard[(shard_dir, shard)] += 1
    counts: dict[str, int] = defaultdict(int)
    for (shard_dir, shard), count in per_shard.items():
        engine = shards.read_manifest(home.absolute(shard_dir), shard).get("engine") or {"engine": "torch"}
        counts[json.dumps(engine, sort_keys=True)] += count
    records = [json.loads(key) | {"vectors": n} for key, n in counts.items()]
    return sorted(records, key=lambda r: (-r["vectors"], r["engine"]))
