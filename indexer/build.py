"""Building FAISS indexes: in memory, or with their inverted lists on disk.

Training uses a sample of the stored vectors (the coarse k-means on a GPU where FAISS has one,
see :mod:`indexer.faiss_gpu`), then vectors are added a chunk at a time, so a build never holds
every vector. On-disk builds (planner ``storage="ondisk"``, IVF only) write per-block
sub-indexes and merge their inverted lists into ``index.ivfdata`` with
``faiss.contrib.ondisk.merge_ondisk``, inside the version's staging folder (so publishing stays
one rename, see :mod:`indexer.versions`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import (
    InputError,
)
from indexer import faiss_gpu
from indexer.choice import IndexChoice
from indexer.home import Home
from indexer.vectors import BUILD_CHUNK, gather_vectors

ONDISK_FILE = "index.ivfdata"  # an on-disk version's inverted lists, beside index.faiss


def build_index(xb: np.ndarray, ids: np.ndarray, index_type: str) -> Any:
    """Build an inner-product index over ``xb`` (n, d) float32 with int64 ``ids`` (n,), in memory."""
    index = empty_index(int(xb.shape[1]), index_type)
    if not index.is_trained:
        with faiss_gpu.ivf_training(index):
            index.train(np.ascontiguousarray(xb, dtype=np.float32))
    if len(xb):
        index.add_with_ids(
            np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
        )
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
    home: Home,
    locations: Sequence[tuple[int, str, str, int]],
    dim: int,
    choice: IndexChoice,
    seed: int = 0,
    folder: Path | None = None,
) -> Any:
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
    dim: int,
    choice: IndexChoice,
    sample: Callable[[], np.ndarray] | None,
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    folder: Path | None = None,
    centroids: np.ndarray | None = None,
) -> Any:
    """Build ``choice``: train on ``sample()`` ((n, dim) float32, asked for only if the index needs
    training, and released before adding), then add the (ids, vectors) ``chunks`` in order: in
    memory, or block by block on disk into ``folder``. ``centroids`` (nlist, dim): an IVF coarse
    quantizer trained before (shared by several builds): only the codes are trained then."""
    index = empty_index(dim, choice.factory, id_map=not choice.ondisk)
    if centroids is not None:
        import faiss

        faiss.extract_index_ivf(index).quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if not index.is_trained:
        xt = (
            np.ascontiguousarray(sample(), dtype=np.float32)
            if sample is not None
            else np.empty((0, dim), np.float32)
        )
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
        index.add_with_ids(
            np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
        )
    return index


def build_ondisk(
    trained: Any, chunks: Iterable[tuple[np.ndarray, np.ndarray]], folder: Path, block: int
) -> Any:
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
        sub.add_with_ids(
            np.ascontiguousarray(xb, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
        )
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
