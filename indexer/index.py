"""FAISS index versions: build from shards, write a version folder, publish by pointer switch.

Every index holds L2-normalised vectors under inner product (cosine), with ids = catalog image
ids. A version folder (``index.faiss`` + ``manifest.json``) is written under a temporary name
and renamed whole; ``CURRENT`` is then replaced atomically, so a reader sees either the old or
the new version, never half of one. The previous version stays until the next publish.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.catalog import Catalog
from indexer.home import Home
from indexer.planner import IndexChoice
from pipeline import shards
from vistag.errors import IndexNotFound, InputError, ModelMismatch
from vistag.models import ModelIdentity

FORMAT_VERSION = 1
BUILD_CHUNK = 100_000


def build_index(xb: np.ndarray, ids: np.ndarray, index_type: str) -> Any:
    """Build an inner-product index over ``xb`` (n, d) float32 with int64 ``ids`` (n,), in memory."""
    index = empty_index(int(xb.shape[1]), index_type)
    if not index.is_trained:
        index.train(np.ascontiguousarray(xb, dtype=np.float32))
    if len(xb):
        index.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def empty_index(d: int, index_type: str) -> Any:
    """An empty ``IndexIDMap2`` around ``index_factory(d, index_type)`` under inner product."""
    import faiss

    try:
        inner = faiss.index_factory(d, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise InputError(f"bad FAISS index type {index_type!r}: {str(err).splitlines()[0]}") from err
    return faiss.IndexIDMap2(inner)


def build_from_store(
    home: Home, locations: Sequence[tuple[int, str, str, int]], dim: int, choice: IndexChoice, seed: int = 0
) -> Any:
    """Build ``choice`` from vectors in the shards without holding them all in memory: train on a
    random sample of ``choice.train_size`` vectors, then add ``BUILD_CHUNK`` vectors at a time."""
    index = empty_index(dim, choice.factory)
    if not index.is_trained:
        size = min(len(locations), max(choice.train_size, 1))
        pick = np.sort(np.random.default_rng(seed).choice(len(locations), size, replace=False))
        _, sample = gather_vectors(home, [locations[i] for i in pick], dim)
        try:
            index.train(sample)
        except RuntimeError as err:
            reason = str(err).splitlines()[-1].split("Error: ")[-1]
            raise InputError(f"cannot train {choice.factory} on {len(sample)} vectors: {reason}") from err
    for start in range(0, len(locations), BUILD_CHUNK):
        ids, xb = gather_vectors(home, locations[start : start + BUILD_CHUNK], dim)
        index.add_with_ids(xb, ids)
    return index


def exact_search(
    home: Home, locations: Sequence[tuple[int, str, str, int]], dim: int, xq: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of ``xq`` (Q, d) over the stored vectors, streamed by chunk.

    Returns D (Q, k) float32 and I (Q, k) int64 catalog ids (-1 where fewer than k exist)."""
    import faiss

    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    for start in range(0, len(locations), BUILD_CHUNK):
        ids, xb = gather_vectors(home, locations[start : start + BUILD_CHUNK], dim)
        D, I = faiss.knn(np.ascontiguousarray(xq, dtype=np.float32), xb, min(k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
        pad = k - D.shape[1]
        if pad:
            D = np.pad(D, ((0, 0), (0, pad)), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
        heap.add_result(D, np.where(I >= 0, ids[np.maximum(I, 0)], -1))
    heap.finalize()
    return heap.D, heap.I


def rerank_search(
    index: Any, xq: np.ndarray, k: int, factor: int, fetch: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``factor * k`` candidates with the (lossy) index, re-score them exactly.

    ``fetch(ids)`` returns the stored (len(ids), d) float32 vectors of catalog ids."""
    D, I = index.search(xq, k * factor)
    out_d, out_i = np.full((len(xq), k), -np.inf, np.float32), np.full((len(xq), k), -1, np.int64)
    for q in range(len(xq)):
        cand = I[q][I[q] >= 0]
        if not len(cand):
            continue
        exact = fetch(cand) @ xq[q]
        order = np.argsort(-exact, kind="stable")[:k]
        out_d[q, : len(order)], out_i[q, : len(order)] = exact[order], cand[order]
    return out_d, out_i


def gather_vectors(home: Home, locations: Sequence[tuple[int, str, str, int]], dim: int) -> tuple[np.ndarray, np.ndarray]:
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
        order = np.argsort(rows)
        xb[positions[order]] = matrix[rows[order]]
    return ids, xb


def stored_vectors(home: Home, catalog: Catalog, identity: ModelIdentity, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), d) float32 stored vectors of catalog ``ids`` in that order, deleted images included."""
    locations = catalog.vector_locations(catalog.model_id(identity), ids=[int(i) for i in ids], live_only=False)
    found, xb = gather_vectors(home, locations, identity.embed_dim)
    position = {int(i): p for p, i in enumerate(found.tolist())}
    return xb[[position[int(i)] for i in ids]]


@dataclass(frozen=True)
class IndexVersion:
    """A published (or about to be published) index version folder."""

    path: Path
    manifest: dict[str, Any]

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity.from_dict(self.manifest["model"])

    @property
    def name(self) -> str:
        return f"{self.manifest['model']['key']}/{self.path.name}"

    def load(self, mmap: bool = False) -> Any:
        """The FAISS index with its tuned search parameters applied."""
        import faiss

        from indexer.planner import set_search_params

        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(self.path / "index.faiss"), flags)
        set_search_params(index, self.manifest.get("search", {}).get("params", {}))
        return index

    @property
    def rerank(self) -> int:
        return int(self.manifest.get("search", {}).get("rerank", 0))


def write_version(
    home: Home, identity: ModelIdentity, index: Any, index_type: str, run_id: int | None, catalog_state: str = "",
    search: dict[str, Any] | None = None,
) -> IndexVersion:
    """Write ``index`` as the next version folder of ``identity``'s model (not yet published).

    ``catalog_state`` identifies the catalog content the index was built from (see
    :meth:`indexer.catalog.Catalog.live_state`), so a later run can tell whether it is current;
    ``search`` holds how to search it (``params`` such as nprobe, ``rerank``, measured recall).
    """
    import faiss

    model_root = home.index_root / identity.key
    model_root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[1:]) for p in model_root.glob("v[0-9]*") if p.name[1:].isdigit()]
    final = model_root / f"v{max(numbers, default=0) + 1:06d}"
    tmp = model_root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    faiss.write_index(index, str(tmp / "index.faiss"))
    manifest = {
        "format_version": FORMAT_VERSION, "model": identity.to_dict(), "metric": "inner_product",
        "count": int(index.ntotal), "dim": identity.embed_dim, "index_type": index_type,
        "id_map": "faiss id = catalog images.id", "run_id": run_id, "created": time.time(),
        "catalog_state": catalog_state, "search": search or {},
    }  # fmt: skip
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_dir(tmp)
    os.rename(tmp, final)
    return IndexVersion(final, manifest)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as fh:
            os.fsync(fh.fileno())


def publish(home: Home, version: IndexVersion) -> None:
    """Point CURRENT at ``version`` atomically, then delete versions older than the previous one."""
    previous = current_version_path(home)
    tmp = home.current_pointer.with_name(f"CURRENT.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"path": str(version.path.relative_to(home.root))}))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, home.current_pointer)
    keep = {version.path.resolve()} | ({previous.resolve()} if previous else set())
    for old in home.index_root.glob("*/v[0-9]*"):
        if old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)


def current_version_path(home: Home) -> Path | None:
    try:
        pointer = json.loads(home.current_pointer.read_text())
    except FileNotFoundError:
        return None
    return home.root / pointer["path"]


def current_version(home: Home) -> IndexVersion:
    """The published version; raises :class:`IndexNotFound` when nothing is published."""
    path = current_version_path(home)
    if path is None or not (path / "manifest.json").exists():
        raise IndexNotFound(f"no index published in {home.root}: run `vistag index PATH` first")
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelMismatch(f"index {path} has unknown format version {manifest.get('format_version')}")
    return IndexVersion(path, manifest)
