"""FAISS on the GPU where the installed FAISS has one (a faiss-gpu build), on the CPU otherwise.

The two bulk FAISS jobs of vistag move to the GPU; nothing else changes, and what they produce is
the same within floating-point tolerance:

- **IVF coarse training** (:func:`ivf_training`): the k-means of an IVF build assigns its
  training sample to the centroids on the GPU(s), through FAISS's own hook for it
  (``IndexIVF.clustering_index``, the way FAISS's benchmarks train on GPUs). That k-means is most
  of an IVF build (267 s of 553 s for 5M vectors on 2 CPU cores); codes (SQ8, PQ) are trained and
  vectors added on the CPU as before, so the index written is an ordinary CPU index.
- **Exact kNN** (:func:`knn`): the image kNN graph of ZLaP and its text-to-image edges. On a GPU
  the graph is exact (brute force, tiled through GPU memory) up to ``GPU_EXACT_MAX`` images,
  instead of searching the version's approximate index on the CPU (443-765 s for 1M images on
  2 cores).

Serving stays on the CPU: one query in an IVF index takes under a millisecond there, less than a
round trip to a GPU would.

``VISTAG_FAISS_GPU``: ``auto`` (default: the GPU when FAISS sees one), ``0`` (never), ``1``
(always; an error when FAISS sees no GPU). FAISS with GPU support: see the README's
"FAISS on a GPU".
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from core.errors import InputError

ENV = "VISTAG_FAISS_GPU"
GPU_EXACT_MAX = 5_000_000  # images: above, one exact all-pairs pass costs more than an IVF search
GPU_MAX_K = 2048  # FAISS's GPU k-selection limit
VECTORS_BYTES = 4 << 30  # database vectors on the GPU at once (knn_gpu tiles the rest)
QUERIES_BYTES = 1 << 30  # queries and their results on the GPU at once
_OFF = ("0", "off", "cpu", "false", "no")
_ON = ("1", "on", "gpu", "true", "yes")
_LOCK = threading.Lock()  # a StandardGpuResources is not safe for concurrent use
_told: set[str] = set()


def gpu_count() -> int:
    """GPUs the installed FAISS can use: 0 for faiss-cpu, or a GPU build on a machine without one."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA set-up means no GPU, not a failed run
        return 0


def use_gpu() -> bool:
    """Whether FAISS's bulk work runs on the GPU, per ``VISTAG_FAISS_GPU`` (see the module doc).

    Raises :class:`InputError` for a bad value, or for ``1`` when FAISS sees no GPU."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode in _OFF:
        return False
    if mode not in _ON and mode not in ("", "auto"):
        raise InputError(f"bad {ENV}={os.environ[ENV]!r}: expected auto, 0 or 1")
    count = gpu_count()
    if mode in _ON and not count:
        raise InputError(
            f"{ENV}={os.environ[ENV]} but the installed FAISS sees no GPU "
            "(faiss-cpu is installed, or no CUDA device is visible): see the README's 'FAISS on a GPU'"
        )
    return count > 0


@functools.cache
def _resources() -> Any:
    import faiss

    return faiss.StandardGpuResources()


def _tell(what: str) -> None:
    """One stderr line per process and kind of work, so a run says where FAISS ran."""
    if what not in _told:
        _told.add(what)
        print(f"FAISS: {what} on {gpu_count()} GPU(s)", file=sys.stderr)


def _gpu_assign_index(d: int, metric: int) -> Any:
    """A flat index of metric ``metric`` on all GPUs, for k-means assignment."""
    import faiss

    return faiss.index_cpu_to_all_gpus(faiss.IndexFlat(d, metric))


@contextlib.contextmanager
def ivf_training(index: Any, assign: Any = None) -> Iterator[bool]:
    """Within the block, ``index.train`` runs an IVF index's coarse k-means with ``assign`` (a
    FAISS flat index of the IVF's dimension and metric), by default a flat index on the GPU(s)
    when :func:`use_gpu`. Yields whether a helper index is in place: False for indexes that are
    not IVF or on the CPU path (training then runs as it always did). The helper is detached
    afterwards, so the trained index holds nothing of the GPU."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and assign is None and use_gpu():
        assign = _gpu_assign_index(ivf.d, ivf.metric_type)
        _tell("IVF coarse training")
    if ivf is None or assign is None:
        yield False
        return
    ivf.clustering_index = assign
    try:
        yield True
    finally:
        ivf.clustering_index = None


def knn(xq: np.ndarray, xb: np.ndarray, k: int, metric: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``xq`` in ``xb`` (both float32; inner product unless ``metric``): D, I
    (positions in ``xb``), as ``faiss.knn`` returns them; on the GPU when :func:`use_gpu`."""
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT if metric is None else metric
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if k <= GPU_MAX_K and len(xq) and len(xb) and use_gpu():
        _tell("exact kNN")
        return _knn_gpu(xq, xb, k, metric)
    return faiss.knn(xq, xb, k, metric=metric)


def _knn_gpu(xq: np.ndarray, xb: np.ndarray, k: int, metric: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    with _LOCK:
        return faiss.knn_gpu(
            _resources(),
            xq,
            xb,
            k,
            metric=metric,
            device=0,
            vectorsMemoryLimit=VECTORS_BYTES,
            queriesMemoryLimit=QUERIES_BYTES,
        )


def exact_graph_on_gpu(n: int) -> bool:
    """Whether the kNN graph of ``n`` images is computed exactly on the GPU (see the module doc)."""
    return n <= GPU_EXACT_MAX and use_gpu()
