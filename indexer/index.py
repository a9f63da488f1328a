"""FAISS index versions: build from shards, write a version folder, publish by pointer switch.

Every index holds L2-normalised vectors under inner product (cosine), with ids = catalog image
ids. A version folder (``index.faiss`` + ``manifest.json``) is written under a temporary name
and renamed whole; ``CURRENT`` is then replaced atomically, so a reader sees either the old or
the new version, never half of one. The previous version stays until the next publish.

On-disk versions (planner ``storage="ondisk"``, IVF only) also hold ``index.ivfdata``: the
inverted lists, merged on disk from per-block sub-indexes by ``faiss.contrib.ondisk.merge_ondisk``
(built inside the temporary folder, so publishing stays one rename). FAISS stores the lists'
file name inside ``index.faiss``; it is written as the bare name and resolved against the
version folder on every read, so a version folder can be moved or copied whole. Reading (see
:func:`read_index`): on-disk lists are always memory-mapped; other indexes are memory-mapped
(``IO_FLAG_MMAP_IFC``, read-only) when ``index.faiss`` is at least ``MMAP_MIN_BYTES``, so a
server maps a large index instead of copying it into its own memory.

Integrity: the manifest (written last) holds the SHA-256 and size of every other file of the
version (``files``) and the id of the catalog it was built from (``catalog_id``). Files are
checked when they are loaded: hashed unless the folder's verification stamp (``stamp.json``,
see :func:`pipeline.shards.verify_files`) vouches for them. A damaged version raises
:class:`DamagedState`; ``vistag index`` then rebuilds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.catalog import Catalog
from indexer.home import Home
from indexer.planner import IndexChoice
from pipeline import shards
from vistag import faiss_gpu
from vistag.errors import (
    DamagedIndex,
    DamagedState,
    IndexNotFound,
    InputError,
    ModelMismatch,
    ShardFormatError,
)
from vistag.models import ModelIdentity

FORMAT_VERSION = 1
BUILD_CHUNK = 100_000
INDEX_FILE = "index.faiss"
ONDISK_FILE = "index.ivfdata"
MMAP_MIN_BYTES = 256 * 2**20  # index files at least this large are memory-mapped for serving
STAMP_FILE = "stamp.json"
VERSION_REPAIR = "`vistag index PATH` rebuilds it from the shards"


def build_index(xb: np.ndarray, ids: np.ndarray, index_type: str) -> Any:
    """Build an inner-product index over ``xb`` (n, d) float32 with int64 ``ids`` (n,), in memory."""
    index = empty_index(int(xb.shape[1]), index_type)
    if not index.is_trained:
        with faiss_gpu.ivf_training(index):
            index.train(np.ascontiguousarray(xb, dtype=np.float32))
    if len(xb):
        index.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def empty_index(d: int, index_type: str, id_map: bool = True) -> Any:
    """An empty ``index_factory(d, index_type)`` under inner product, in an ``IndexIDMap2`` unless
    ``id_map`` is false (IVF indexes store ids themselves; on-disk ones must, see :func:`build_ondisk`)."""
    import faiss

    try:
        inner = faiss.index_factory(d, index_type, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise InputError(f"bad FAISS index type {index_type!r}: {str(err).splitlines()[0]}") from err
    return faiss.IndexIDMap2(inner) if id_map else inner


def build_from_store(
    home: Home, locations: Sequence[tuple[int, str, str, int]], dim: int, choice: IndexChoice, seed: int = 0,
    folder: Path | None = None,
) -> Any:  # fmt: skip
    """Build ``choice`` from vectors in the shards without holding them all in memory: train on a
    random sample of ``choice.train_size`` vectors, then add ``BUILD_CHUNK`` vectors at a time.

    An on-disk choice is built into ``folder`` (from :func:`new_staging`), see :func:`build_ondisk`."""

    def sample() -> np.ndarray:
        size = min(len(locations), max(choice.train_size, 1))
        pick = np.sort(np.random.default_rng(seed).choice(len(locations), size, replace=False))
        return gather_vectors(home, [locations[i] for i in pick], dim)[1]

    step = min(BUILD_CHUNK, choice.block) if choice.ondisk else BUILD_CHUNK
    chunks = (gather_vectors(home, locations[s : s + step], dim) for s in range(0, len(locations), step))
    return build_from_chunks(dim, choice, sample, chunks, folder)


def build_from_chunks(
    dim: int, choice: IndexChoice, sample: Callable[[], np.ndarray] | None,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], folder: Path | None = None, centroids: np.ndarray | None = None,
) -> Any:  # fmt: skip
    """Build ``choice``: train on ``sample()`` ((n, dim) float32, asked for only if the index needs
    training, and released before adding), then add the (ids, vectors) ``chunks`` in order: in
    memory, or block by block on disk into ``folder``. ``centroids`` (nlist, dim): an IVF coarse
    quantizer trained before (shared by several builds): only the codes are trained then."""
    index = empty_index(dim, choice.factory, id_map=not choice.ondisk)
    if centroids is not None:
        import faiss

        faiss.extract_index_ivf(index).quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if not index.is_trained:
        xt = np.ascontiguousarray(sample(), dtype=np.float32) if sample is not None else np.empty((0, dim), np.float32)
        if not len(xt):
            raise InputError(f"cannot train {choice.factory} without vectors")
        try:
            with faiss_gpu.ivf_training(index):  # the coarse k-means on the GPU where FAISS has one
                index.train(xt)
        except RuntimeError as err:
            reason = str(err).splitlines()[-1].split("Error: ")[-1]
            raise InputError(f"cannot train {choice.factory} on {len(xt)} vectors: {reason}") from err
        del xt
    if choice.ondisk:
        if folder is None:
            raise ValueError("an on-disk index is built into a staging folder: pass folder=new_staging(...)")
        return build_ondisk(index, chunks, folder, choice.block)
    for ids, xb in chunks:
        index.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return index


def build_ondisk(trained: Any, chunks: Iterable[tuple[np.ndarray, np.ndarray]], folder: Path, block: int) -> Any:
    """Fill a trained, empty IVF index from ``chunks`` with inverted lists on disk.

    Chunks are added to a copy of ``trained`` until it holds ``block`` vectors; that sub-index is
    written to ``folder/.blocks/`` and dropped, so memory holds one block at a time. The blocks'
    inverted lists are then merged into ``folder/index.ivfdata`` (memory-mapped, so the merge is
    bounded by the page cache, not by memory) and the blocks are deleted. Lists keep the order of
    the chunks, so searches give exactly what the in-memory build of the same data gives.
    The index stores catalog ids in its lists (no ``IndexIDMap2``: its id map would be per block).
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    if faiss.try_extract_index_ivf(trained) is None:
        raise InputError("on-disk storage needs an IVF index type")
    parts = folder / ".blocks"
    parts.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    sub = None

    def flush(full: Any) -> None:
        names.append(str(parts / f"block-{len(names):05d}.faiss"))
        faiss.write_index(full, names[-1])

    for ids, xb in chunks:
        if sub is None:
            sub = faiss.clone_index(trained)
        sub.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        if sub.ntotal >= block:
            flush(sub)
            sub = None
    if sub is not None and sub.ntotal:
        flush(sub)
    sub = None
    index = faiss.clone_index(trained)
    with _c_stdout_to_stderr():  # OnDiskInvertedLists printf()s "resizing..." to stdout
        merge_ondisk(index, names, str(folder / ONDISK_FILE))
    shutil.rmtree(parts)
    if not (folder / ONDISK_FILE).exists():  # no vectors: FAISS creates no file for empty lists
        (folder / ONDISK_FILE).touch()
    return index


@contextlib.contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    """Send what C code writes to file descriptor 1 to 2 for a while (keeps ``--json`` output clean)."""
    import ctypes

    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (a daemon): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def ondisk_lists(index: Any) -> Any:
    """The ``OnDiskInvertedLists`` of an IVF index (through wrappers), or None."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def read_index(path: Path, storage: str = "memory", mmap: bool | None = None) -> Any:
    """Read an index file of a version folder.

    ``storage="ondisk"``: the inverted lists are memory-mapped from ``index.ivfdata`` next to
    ``path`` (wherever the folder is now; read-only). Otherwise ``mmap``: True maps the file
    read-only instead of reading it, False reads it into memory, None (default) maps it when it
    is at least ``MMAP_MIN_BYTES``.
    """
    import faiss

    path = Path(path)
    if storage == "ondisk":
        # IO_FLAG_ONDISK_SAME_DIR does the same but printf()s to stdout; skip the data, then map
        # the lists file of this folder ourselves.
        index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
        lists = ondisk_lists(index)
        if lists is None:
            raise ModelMismatch(f"{path} is marked on-disk but has no on-disk inverted lists")
        lists.filename = str(path.parent / ONDISK_FILE)
        if lists.totsize:
            lists.do_mmap()
        return index
    if mmap is None:
        mmap = path.stat().st_size >= MMAP_MIN_BYTES
    flags = 0
    if mmap:  # IO_FLAG_MMAP_IFC maps flat codes, HNSW storage and IVF lists alike (FAISS >= 1.11)
        flags = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP) | faiss.IO_FLAG_READ_ONLY
    return faiss.read_index(str(path), flags)


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
            D, I = faiss.knn(np.ascontiguousarray(xq, dtype=np.float32), xb, min(k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
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
        # einsum, not ``@``: a BLAS call right after FAISS's OpenMP search made the two thread
        # pools wait on each other (8 ms instead of 1.1 ms for 1,000 candidates on 2 cores)
        exact = np.einsum("ij,j->i", fetch(cand), xq[q])
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
        if int(rows.max()) >= len(matrix):
            label = shards.shard_label(home.absolute(shard_dir), shard)
            message = f"{label} has {len(matrix)} embeddings; the catalog points at row {rows.max()}"
            raise ShardFormatError(message, label)
        order = np.argsort(rows)
        xb[positions[order]] = matrix[rows[order]]
    return ids, xb


class VectorTable:
    """Where each vector of an index version lives, so re-ranking reads candidates' stored
    vectors with no SQL: ``vectors-ids.npy`` (n,) int64 catalog ids, sorted, and
    ``vectors-at.npy`` (n, 2) int64 (shard number, row), both memory-mapped (a lookup touches
    a few pages, whatever n), plus ``vectors.json`` naming the shards (folders relative to the
    home, as the catalog stores them). Written with versions whose codes are re-ranked (PQ):
    fetching 1,000 candidates through the catalog costs milliseconds a query. Shards are
    memory-mapped once each and kept open."""

    IDS, AT, NAMES = "vectors-ids.npy", "vectors-at.npy", "vectors.json"

    def __init__(self, home: Home, ids: np.ndarray, at: np.ndarray, names: list[tuple[str, str]], dim: int):
        self.home, self.ids, self.at, self.names, self.dim = home, ids, at, names, dim
        self._shards: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def write(cls, folder: Path, locations: Sequence[tuple[int, str, str, int]]) -> None:
        """Write the table of ``locations`` ((id, shard_dir, shard, row), as the catalog gives them)."""
        number: dict[tuple[str, str], int] = {}
        ids = np.fromiter((loc[0] for loc in locations), np.int64, len(locations))
        at = np.empty((len(locations), 2), np.int64)
        for i, (_, shard_dir, shard, row) in enumerate(locations):
            at[i] = (number.setdefault((shard_dir, shard), len(number)), row)
        order = np.argsort(ids, kind="stable")
        np.save(folder / cls.IDS, ids[order])
        np.save(folder / cls.AT, at[order])
        (folder / cls.NAMES).write_text(json.dumps([list(k) for k in number]))

    @classmethod
    def load(cls, home: Home, version: IndexVersion) -> VectorTable | None:
        """The version's table, or None for versions written without one (or that lost it: the
        catalog then serves stored vectors); checked against the version's checksums first."""
        if not (version.path / cls.IDS).exists():
            return None
        version.verify([cls.IDS, cls.AT, cls.NAMES])
        try:
            names = [(str(a), str(b)) for a, b in json.loads((version.path / cls.NAMES).read_text())]
            ids = np.load(version.path / cls.IDS, mmap_mode="r")
            at = np.load(version.path / cls.AT, mmap_mode="r")
        except (OSError, ValueError, TypeError) as err:
            raise DamagedState(f"index version {version.name}: unreadable vector table ({err}); "
                               f"{VERSION_REPAIR}", str(version.path)) from err  # fmt: skip
        return cls(home, ids, at, names, version.identity.embed_dim)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), dim) float32 stored vectors of catalog ``ids``; :class:`IndexNotFound` for an
        id the version does not hold."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        if not len(ids):
            return out
        pos = np.searchsorted(self.ids, ids).clip(0, max(len(self.ids) - 1, 0))
        if not len(self.ids) or not np.array_equal(self.ids[pos], ids):
            missing = ids if not len(self.ids) else ids[self.ids[pos] != ids]
            raise IndexNotFound(f"image {int(missing[0])} is not in this index version")
        at = self.at[pos]
        for number in np.unique(at[:, 0]):
            mask = at[:, 0] == number
            out[mask] = self._shard(int(number))[at[mask, 1]]
        return out

    def _shard(self, number: int) -> np.ndarray:
        with self._lock:
            if number not in self._shards:
                shard_dir, shard = self.names[number]
                self._shards[number] = shards.read_embeddings(self.home.absolute(shard_dir), shard)
            return self._shards[number]


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

    @property
    def storage(self) -> str:
        """``"memory"``, or ``"ondisk"`` when the inverted lists are in ``index.ivfdata``."""
        return str(self.manifest.get("storage", "memory"))

    def load(self, mmap: bool | None = None) -> Any:
        """The FAISS index with its tuned search parameters applied. Memory-mapped read-only when
        on disk, or when ``mmap`` is True, or (None) when the file is large; see :func:`read_index`."""
        from indexer.planner import set_search_params

        self.verify([INDEX_FILE, ONDISK_FILE])
        try:
            index = read_index(self.path / INDEX_FILE, self.storage, mmap)
        except (RuntimeError, MemoryError, OSError) as err:  # files written before checksums were recorded
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise DamagedState(f"index version {self.name} cannot be read ({reason}); {VERSION_REPAIR}",
                               str(self.path)) from err  # fmt: skip
        set_search_params(index, self.manifest.get("search", {}).get("params", {}))
        return index

    def verify(self, names: Iterable[str] | None = None, full: bool = False) -> int:
        """Check the version's files (``names``: those of them) against the manifest's checksums,
        hashing those the stamp does not vouch for (``full``: all); returns the bytes hashed.
        Raises :class:`DamagedState`; versions written without checksums are not checked."""
        files = self.manifest.get("files") or {}
        if names is not None:
            files = {n: files[n] for n in names if n in files}
        if not files:
            return 0
        return shards.verify_files(str(self.path), files, f"index version {self.name}", VERSION_REPAIR,
                                   full=full, stamp=str(self.path / STAMP_FILE))  # fmt: skip

    @property
    def rerank(self) -> int:
        return int(self.manifest.get("search", {}).get("rerank", 0))


def new_staging(home: Home, identity: ModelIdentity) -> Path:
    """A new temporary folder among ``identity``'s versions, to build an on-disk index into; it
    becomes the version folder (one rename) in :func:`write_version`, or is removed by recovery."""
    model_root = home.index_root / identity.key
    model_root.mkdir(parents=True, exist_ok=True)
    tmp = model_root / f".tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def write_version(
    home: Home, identity: ModelIdentity, index: Any, index_type: str, run_id: int | None, catalog_state: str = "",
    search: dict[str, Any] | None = None, locations: Sequence[tuple[int, str, str, int]] | None = None,
    catalog_id: str = "",
) -> IndexVersion:
    """Write ``index`` as the next version folder of ``identity``'s model (not yet published).

    ``catalog_state`` identifies the catalog content the index was built from (see
    :meth:`indexer.catalog.Catalog.live_state`), so a later run can tell whether it is current;
    ``search`` holds how to search it (``params`` such as nprobe, ``rerank``, measured recall).
    ``locations`` (the vectors the index was built from): written as the version's
    :class:`VectorTable` when its search re-ranks. ``catalog_id``: the catalog's identity
    (:meth:`indexer.catalog.Catalog.catalog_id`). The manifest records every file's checksum.
    An on-disk index (see :func:`build_ondisk`) is finished in the staging folder it was built in.
    """
    import faiss

    model_root = home.index_root / identity.key
    lists = ondisk_lists(index)
    if lists is not None:
        tmp = Path(lists.filename).parent
        if tmp.parent.resolve() != model_root.resolve() or not tmp.name.startswith(".tmp-"):
            raise ValueError(f"on-disk index lists {lists.filename} are not in a staging folder of {model_root}")
        built_at = lists.filename
        lists.filename = ONDISK_FILE  # stored inside index.faiss: the bare name keeps the folder relocatable
        try:
            faiss.write_index(index, str(tmp / INDEX_FILE))
        finally:
            lists.filename = built_at
    else:
        tmp = new_staging(home, identity)
        faiss.write_index(index, str(tmp / INDEX_FILE))
    manifest = {
        "format_version": FORMAT_VERSION, "model": identity.to_dict(), "metric": "inner_product",
        "count": int(index.ntotal), "dim": identity.embed_dim, "index_type": index_type,
        "id_map": "faiss id = catalog images.id", "run_id": run_id, "created": time.time(),
        "catalog_state": catalog_state, "search": search or {},
        "storage": "ondisk" if lists is not None else "memory", "catalog_id": catalog_id,
    }  # fmt: skip
    if lists is not None:
        manifest["ivfdata"] = ONDISK_FILE
    if locations is not None and (search or {}).get("rerank"):
        VectorTable.write(tmp, locations)
    manifest["files"] = {p.name: shards.checksum_file(str(p)) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_dir(tmp)
    numbers = [int(p.name[1:]) for p in model_root.glob("v[0-9]*") if p.name[1:].isdigit()]
    final = model_root / f"v{max(numbers, default=0) + 1:06d}"
    os.rename(tmp, final)
    return IndexVersion(final, manifest)


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with open(child, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(home: Home, version: IndexVersion) -> None:
    """Point CURRENT at ``version`` atomically, then delete versions older than the previous one."""
    try:
        previous = current_version_path(home)
    except DamagedState:
        previous = None
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
    """The published version's folder (None: nothing published); :class:`DamagedState` when the
    pointer cannot be read."""
    try:
        pointer = json.loads(home.current_pointer.read_text())
        return home.root / pointer["path"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DamagedIndex(f"{home.current_pointer} is damaged ({err}); {VERSION_REPAIR}",
                           str(home.current_pointer)) from err  # fmt: skip


def current_version(home: Home) -> IndexVersion:
    """The published version; raises :class:`IndexNotFound` when nothing is published."""
    path = current_version_path(home)
    if path is None or not (path / "manifest.json").exists():
        raise IndexNotFound(f"no index published in {home.root}: run `vistag index PATH` first")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        name = f"{path.parent.name}/{path.name}"
        message = f"index version {name}: unreadable manifest ({err}); {VERSION_REPAIR}"
        raise DamagedIndex(message, str(path)) from err
    if not isinstance(manifest, dict):
        message = f"index version {path.parent.name}/{path.name}: manifest is not an object; {VERSION_REPAIR}"
        raise DamagedIndex(message, str(path))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelMismatch(f"index {path} has unknown format version {manifest.get('format_version')}")
    return IndexVersion(path, manifest)
