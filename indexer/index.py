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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.home import Home
from pipeline import shards
from vistag.errors import IndexNotFound, InputError, ModelMismatch
from vistag.models import ModelIdentity

FORMAT_VERSION = 1
EXACT_MAX = 100_000


def choose_index_type(count: int, override: str | None = None) -> str:
    """A FAISS factory string: exact search up to EXACT_MAX vectors, HNSW above, or the override."""
    if override:
        return override
    return "Flat" if count <= EXACT_MAX else "HNSW32,Flat"


def build_index(xb: np.ndarray, ids: np.ndarray, index_type: str) -> Any:
    """Build an inner-product index over ``xb`` (n, d) float32 with int64 ``ids`` (n,)."""
    import faiss

    d = int(xb.shape[1])
    try:
        inner = faiss.index_factory(d, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise InputError(f"bad FAISS index type {index_type!r}: {err}") from err
    index = faiss.IndexIDMap2(inner)
    if not index.is_trained:
        index.train(xb)
    if len(xb):
        index.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


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
        import faiss

        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        return faiss.read_index(str(self.path / "index.faiss"), flags)


def write_version(
    home: Home, identity: ModelIdentity, index: Any, index_type: str, run_id: int | None, catalog_state: str = ""
) -> IndexVersion:
    """Write ``index`` as the next version folder of ``identity``'s model (not yet published).

    ``catalog_state`` identifies the catalog content the index was built from (see
    :meth:`indexer.catalog.Catalog.live_state`), so a later run can tell whether it is current.
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
        "catalog_state": catalog_state,
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
