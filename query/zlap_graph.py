"""ZLaP's graph: the kNN edges between images and from images to text nodes, their weights, and
the normalised Laplacian ``L = I - alpha D^-1/2 W D^-1/2`` that :mod:`query.zlap_solve` solves
(see :mod:`query.zlap` for the method and the reference's quirks this keeps).

Node order: text (class) nodes first, ``0..C-1``; image ``i`` is node ``C + i``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from core.errors import VistagError
from indexer import faiss_gpu

KnnPair = tuple[np.ndarray, np.ndarray]
NORM_ATOL = 1e-3  # how far from 1 a row's norm may be


class ZLaPError(VistagError, ValueError):
    """Invalid input or parameter given to a ZLaP function (also a ``ValueError``)."""

    exit_code = 2


@dataclass(frozen=True)
class ZLaPGraph:
    """The propagation graph: ``L`` is (C+N, C+N) float64 CSR, text nodes first.

    ``sim_range`` is ``(m, M)`` of the proxy-mode rescaling, or None when ``scale_sim=False``.
    """

    L: sp.csr_matrix
    n_classes: int
    sim_range: tuple[float, float] | None


# ----------------------------------------------------------------------------- validation


def check_feats(name: str, x: object, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a C-contiguous (n, d) float32 array or raise ZLaPError."""
    if not isinstance(x, np.ndarray):
        raise ZLaPError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ZLaPError(f"{name} must be a non-empty 2-D array (n, d), got shape {x.shape}")
    if x.dtype != np.float32:
        raise ZLaPError(f"{name} must be float32, got {x.dtype}; cast with .astype(np.float32)")
    if dim is not None and x.shape[1] != dim:
        raise ZLaPError(f"{name} has dimension {x.shape[1]}, expected {dim}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))  # no (n, d) temporary
    if not np.isfinite(norms).all():  # any NaN/inf entry makes its row norm non-finite
        raise ZLaPError(f"{name} contains NaN or infinite values")
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_ATOL)
    if bad.size:
        raise ZLaPError(
            f"{name} rows must be L2-normalised; row {bad[0]} has norm {norms[bad[0]]:.4g} "
            f"({bad.size} rows off by more than {NORM_ATOL})"
        )
    return np.ascontiguousarray(x)


def check_params(k: int, gamma: float, alpha: float, k_text: int | None) -> int:
    """Validate the hyperparameters; return the effective text neighbour count."""
    for name, v in (("k", k), ("k_text", k_text)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1):
            raise ZLaPError(f"{name} must be an integer >= 1, got {v!r}")
    if not np.isfinite(gamma) or gamma < 0:
        raise ZLaPError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if not (0.0 <= alpha < 1.0):
        raise ZLaPError(f"alpha must lie in [0, 1) for L to be positive definite, got {alpha!r}")
    return int(k if k_text is None else k_text)


def check_knn(knn: object, n_rows: int, width: int, n_db: int) -> KnnPair:
    """Validate a precomputed ``(D, I)`` kNN pair of shape (n_rows, width)."""
    if not (isinstance(knn, tuple | list) and len(knn) == 2):
        raise ZLaPError("knn must be a pair (D, I) of arrays")
    dist, idx = (np.asarray(a) for a in knn)
    for name, a in (("D", dist), ("I", idx)):
        if a.shape != (n_rows, width):
            raise ZLaPError(f"knn {name} must have shape {(n_rows, width)}, got {a.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ZLaPError(f"knn I must be an integer array, got {idx.dtype}")
    if idx.size and (idx.min() < -1 or idx.max() >= n_db):
        raise ZLaPError(f"knn I has ids outside [-1, {n_db})")
    valid = idx >= 0
    if not np.isfinite(dist[valid]).all():
        raise ZLaPError("knn D contains NaN or infinite values at valid ids")
    return dist.astype(np.float64), idx.astype(np.int64)


# ----------------------------------------------------------------------------- graph


def exact_knn(xq: np.ndarray, xb: np.ndarray, k: int) -> KnnPair:
    """Exact inner-product kNN: (D, I) of shape (len(xq), k), float64 and int64 (on the GPU where
    FAISS has one, see :mod:`indexer.faiss_gpu`)."""
    dist, idx = faiss_gpu.knn(xq, xb, k)
    return dist.astype(np.float64), idx.astype(np.int64)


def _edge_weights(
    d_ii: np.ndarray, i_ii: np.ndarray, d_it: np.ndarray, i_it: np.ndarray, gamma: float, scale_sim: bool
) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """Steps 5-7: (rescale), clip, power on text edges. Returns (w_ii, w_it, sim_range)."""
    v_ii, v_it = i_ii >= 0, i_it >= 0
    w_ii, w_it = np.where(v_ii, d_ii, 0.0), np.where(v_it, d_it, 0.0)
    sim_range = None
    if scale_sim:
        vals = np.concatenate([d_ii[v_ii], d_it[v_it]])
        lo, hi = float(vals.min()), float(vals.max())
        if not hi > lo:
            raise ZLaPError(f"scale_sim needs a non-degenerate similarity range, got min=max={lo}")
        w_ii, w_it, sim_range = (w_ii - lo) / (hi - lo), (w_it - lo) / (hi - lo), (lo, hi)
    w_ii = np.where(v_ii, np.maximum(w_ii, 0.0), 0.0)
    w_it = np.where(v_it, np.maximum(w_it, 0.0) ** gamma, 0.0)
    return w_ii, w_it, sim_range


def _assemble(
    i_ii: np.ndarray, w_ii: np.ndarray, i_it: np.ndarray, w_it: np.ndarray, n_cls: int
) -> sp.csr_matrix:
    """Steps 8-10: W = A + A^T with the diagonal (self matches) removed; (C+N)^2 CSR float64."""
    n_img = i_ii.shape[0]
    rows_ii = np.repeat(np.arange(n_img), i_ii.shape[1]).reshape(i_ii.shape)
    rows_it = np.repeat(np.arange(n_img), i_it.shape[1]).reshape(i_it.shape)
    keep_ii = (i_ii >= 0) & (i_ii != rows_ii)  # dropping A's self entries == zeroing W's diagonal
    keep_it = i_it >= 0
    rows = np.concatenate([rows_ii[keep_ii], rows_it[keep_it]]) + n_cls
    cols = np.concatenate([i_ii[keep_ii] + n_cls, i_it[keep_it]])
    vals = np.concatenate([w_ii[keep_ii], w_it[keep_it]])
    n = n_cls + n_img
    a = sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float64)
    w = (a + a.T).tocsr()
    w.sum_duplicates()
    w.eliminate_zeros()  # clipped edges carry no weight
    return w


def _normalise(w: sp.csr_matrix, alpha: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Steps 11-13: degrees (0 -> 1), Wn = D^-1/2 W D^-1/2, L = I - alpha Wn. Returns (Wn, L)."""
    deg = np.asarray(w.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    dinv = 1.0 / np.sqrt(deg)
    wn = w.copy()
    rows = np.repeat(np.arange(w.shape[0]), np.diff(w.indptr))
    wn.data *= dinv[rows] * dinv[wn.indices]
    lap = (sp.identity(w.shape[0], dtype=np.float64, format="csr") - alpha * wn).tocsr()
    lap.sort_indices()
    return wn, lap


def make_graph(
    image_feats: np.ndarray,
    text_feats: np.ndarray,
    *,
    k: int,
    gamma: float,
    alpha: float,
    scale_sim: bool,
    k_text: int | None,
    knn: KnnPair | None,
) -> tuple[ZLaPGraph, sp.csr_matrix, sp.csr_matrix]:
    """Build the graph; returns (ZLaPGraph, W, Wn). Inputs validated here."""
    kt = check_params(k, gamma, alpha, k_text)
    x = check_feats("image_feats", image_feats)
    t = check_feats("text_feats", text_feats, dim=x.shape[1])
    n_img, n_cls = x.shape[0], t.shape[0]
    k_ii = min(k, n_img)
    d_ii, i_ii = exact_knn(x, x, k_ii) if knn is None else check_knn(knn, n_img, k_ii, n_img)
    d_it, i_it = exact_knn(x, t, min(kt, n_cls))
    w_ii, w_it, sim_range = _edge_weights(d_ii, i_ii, d_it, i_it, gamma, scale_sim)
    w = _assemble(i_ii, w_ii, i_it, w_it, n_cls)
    wn, lap = _normalise(w, alpha)
    return ZLaPGraph(L=lap, n_classes=n_cls, sim_range=sim_range), w, wn


def build_graph(
    image_feats: np.ndarray,
    text_feats: np.ndarray,
    *,
    k: int = 5,
    gamma: float = 5.0,
    alpha: float = 0.3,
    scale_sim: bool = False,
    k_text: int | None = None,
    knn: KnnPair | None = None,
    output: Literal["L", "Wn", "W"] = "L",
) -> sp.csr_matrix:
    """Build the ZLaP graph over the C text nodes followed by the N images (spec section 2).

    Args:
        image_feats: (N, d) float32, L2-normalised rows.
        text_feats: (C, d) float32, L2-normalised rows (class embeddings or proxies).
        k: image->image neighbours *including self* (exact search on the same set), and
            the image->text neighbour count unless ``k_text`` is given; capped at N and C.
        gamma: power applied to the clipped image->text similarities only.
        alpha: propagation strength in ``L = I - alpha Wn``; must lie in [0, 1).
        scale_sim: proxy mode: min-max rescale all list similarities, then clip.
        k_text: image->text neighbours (None: same as ``k``).
        knn: optional precomputed image kNN ``(D, I)``, each (N, min(k, N)), e.g. from an
            ANN index (ids -1 are skipped). To be faithful it should contain self matches.
        output: ``"L"`` (default), ``"Wn"`` (normalised weights) or ``"W"`` (raw symmetric W).

    Returns:
        (C+N, C+N) scipy.sparse CSR float64 matrix.
    """
    if output not in ("L", "Wn", "W"):
        raise ZLaPError(f"output must be 'L', 'Wn' or 'W', got {output!r}")
    graph, w, wn = make_graph(
        image_feats, text_feats, k=k, gamma=gamma, alpha=alpha, scale_sim=scale_sim, k_text=k_text, knn=knn
    )
    return {"L": graph.L, "Wn": wn, "W": w}[output]
