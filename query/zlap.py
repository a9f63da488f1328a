"""ZLaP: label propagation for zero-shot tagging (Stojnic, Kalantidis, Tolias, CVPR 2024).

A faithful CPU port of the authors' reference script, as specified in ``docs/ZLAP.md``.
With the default keywords every function reproduces the reference scores to about 1e-6
(and its predictions, except near-ties), including the reference's quirks:

* transductive image kNN lists contain the image itself (k=5 gives 4 real neighbours);
* image->text kNN uses ``k_it = min(k, C)`` (fully connected image-text part when C <= k);
* similarities are clipped at 0, and only image->text edges are raised to the power ``gamma``;
* ``W = A + A^T`` (mutual image pairs weigh ``2 s``), zero diagonal, degree 0 -> 1,
  ``Wn = D^-1/2 W D^-1/2``, ``L = I - alpha Wn``;
* inductive query weights are *not* degree-normalised;
* proxy mode (``scale_sim=True``): the graph rescales then clips, queries clip then rescale.

Node order: text (class) nodes first, ``0..C-1``; image ``i`` is node ``C + i``.

Memory: nothing dense of shape (N+C)x(N+C), NxN or (N+C)xC is ever built. All solves
work on blocks of ``chunk`` right-hand sides at once; the iterative solvers hold about five
float64 arrays of shape (N+C, chunk) (the ``direct`` solver also holds the LU factors), times
``workers`` when several blocks are solved at once in threads. The transductive result itself
is (N, C) (float64 by default, as the contract requires; ``dtype=np.float32`` halves it), and
:meth:`ZLaPInductive.fit_predict` gets it and the sparse-inductive table from one pass of solves.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from vistag import faiss_gpu
from vistag.errors import VistagError

__all__ = [
    "SolveInfo",
    "ZLaPConvergenceWarning",
    "ZLaPError",
    "ZLaPGraph",
    "ZLaPInductive",
    "build_graph",
    "calibrate_scores",
    "propagate_labels",
    "zlap_transductive",
]

Solver = Literal["cg", "series", "direct"]
_SOLVERS = ("cg", "series", "direct")
_NORM_ATOL = 1e-3
REORDER_ABOVE = 200_000  # graphs with more nodes are solved in a cache-friendly node order
KnnPair = tuple[np.ndarray, np.ndarray]


class ZLaPError(VistagError, ValueError):
    """Invalid input or parameter given to a ZLaP function (also a ``ValueError``)."""

    exit_code = 2


class ZLaPConvergenceWarning(UserWarning):
    """An iterative solve stopped at ``maxiter`` above the requested relative residual."""


@dataclass
class SolveInfo:
    """Convergence record of one batch of solves ``L X = B``.

    ``iterations`` is the largest number of matrix products any right-hand side needed,
    ``residual`` the worst relative residual ``||b - L x|| / ||b||`` (for ``cg`` the recursive
    residual, as the reference checks it; for ``series`` an upper bound), ``n_unconverged``
    how many right-hand sides ended above ``tol``, ``seconds`` the wall time of the solves.
    """

    solver: str
    tol: float
    maxiter: int
    n_rhs: int = 0
    iterations: int = 0
    residual: float = 0.0
    n_unconverged: int = 0
    seconds: float = 0.0

    @property
    def converged(self) -> bool:
        """True when every right-hand side reached ``tol``."""
        return self.n_unconverged == 0

    def as_dict(self) -> dict:
        """Plain-dict view, with ``converged`` included."""
        return {**asdict(self), "converged": self.converged}


@dataclass(frozen=True)
class ZLaPGraph:
    """The propagation graph: ``L`` is (C+N, C+N) float64 CSR, text nodes first.

    ``sim_range`` is ``(m, M)`` of the proxy-mode rescaling, or None when ``scale_sim=False``.
    """

    L: sp.csr_matrix
    n_classes: int
    sim_range: tuple[float, float] | None


# ----------------------------------------------------------------------------- validation


def _check_feats(name: str, x: object, dim: int | None = None) -> np.ndarray:
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
    bad = np.flatnonzero(np.abs(norms - 1.0) > _NORM_ATOL)
    if bad.size:
        raise ZLaPError(
            f"{name} rows must be L2-normalised; row {bad[0]} has norm {norms[bad[0]]:.4g} "
            f"({bad.size} rows off by more than {_NORM_ATOL})"
        )
    return np.ascontiguousarray(x)


def _check_params(k: int, gamma: float, alpha: float, k_text: int | None) -> int:
    """Validate the hyperparameters; return the effective text neighbour count."""
    for name, v in (("k", k), ("k_text", k_text)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1):
            raise ZLaPError(f"{name} must be an integer >= 1, got {v!r}")
    if not np.isfinite(gamma) or gamma < 0:
        raise ZLaPError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if not (0.0 <= alpha < 1.0):
        raise ZLaPError(f"alpha must lie in [0, 1) for L to be positive definite, got {alpha!r}")
    return int(k if k_text is None else k_text)


def _check_solver(solver: str, tol: float, maxiter: int, chunk: int) -> None:
    """Validate the solver options."""
    if solver not in _SOLVERS:
        raise ZLaPError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise ZLaPError(f"tol must be a positive number, got {tol!r}")
    for name, v in (("maxiter", maxiter), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ZLaPError(f"{name} must be an integer >= 1, got {v!r}")


def _check_workers(workers: int) -> None:
    """Validate the thread count of the block solves."""
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise ZLaPError(f"workers must be an integer >= 1, got {workers!r}")


def _check_knn(knn: object, n_rows: int, width: int, n_db: int) -> KnnPair:
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


def _knn(xq: np.ndarray, xb: np.ndarray, k: int) -> KnnPair:
    """Exact inner-product kNN: (D, I) of shape (len(xq), k), float64 and int64 (on the GPU where
    FAISS has one, see :mod:`vistag.faiss_gpu`)."""
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


def _make_graph(
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
    kt = _check_params(k, gamma, alpha, k_text)
    x = _check_feats("image_feats", image_feats)
    t = _check_feats("text_feats", text_feats, dim=x.shape[1])
    n_img, n_cls = x.shape[0], t.shape[0]
    k_ii = min(k, n_img)
    d_ii, i_ii = _knn(x, x, k_ii) if knn is None else _check_knn(knn, n_img, k_ii, n_img)
    d_it, i_it = _knn(x, t, min(kt, n_cls))
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
    graph, w, wn = _make_graph(
        image_feats, text_feats, k=k, gamma=gamma, alpha=alpha, scale_sim=scale_sim, k_text=k_text, knn=knn
    )
    return {"L": graph.L, "Wn": wn, "W": w}[output]


# ----------------------------------------------------------------------------- solvers


def _coldot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise dot products of two (n, m) arrays -> (m,)."""
    return np.einsum("ij,ij->j", a, b)


def _cg(
    lap: sp.csr_matrix, b: np.ndarray, tol: float, maxiter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-batched CG, each column exactly as cupyx ``cg`` (x0=0, no preconditioner,
    stop when the recursive residual ``||r|| <= tol ||b||``; converged columns are frozen).

    Returns X (n, m) float64, iterations (m,), relative residuals (m,).
    """
    m = b.shape[1]
    x, r, p, tmp = np.zeros_like(b), b.copy(), np.zeros_like(b), np.empty_like(b)
    bnorm = np.sqrt(_coldot(b, b))
    rho, iters = bnorm**2, np.zeros(m, dtype=np.int64)
    active = bnorm > 0
    rho_old = np.ones(m)
    for _ in range(maxiter):
        if not active.any():
            break
        beta = np.divide(rho, rho_old, out=np.zeros(m), where=active & (rho_old > 0) & (iters > 0))
        p *= beta
        p += r
        q = lap @ p
        pq = _coldot(p, q)
        step = np.divide(rho, pq, out=np.zeros(m), where=active & (pq > 0))
        x += np.multiply(p, step, out=tmp)
        r -= np.multiply(q, step, out=tmp)
        rho_old, rho = rho, _coldot(r, r)
        iters += active
        active &= np.sqrt(rho) > tol * bnorm
    return x, iters, np.divide(np.sqrt(rho), bnorm, out=np.zeros(m), where=bnorm > 0)


def _series(
    lap: sp.csr_matrix, b: np.ndarray, tol: float, maxiter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truncated Neumann series ``sum_t (alpha Wn)^t b``, with ``alpha Wn p = p - L p``.

    After summing terms 0..T the residual is exactly term T+1; a column stops once that term
    is below ``tol ||b||`` (the term is still added, so the reported residual is an upper bound).
    """
    m = b.shape[1]
    x, term = b.copy(), b.copy()
    bnorm = np.sqrt(_coldot(b, b))
    rel, iters = np.zeros(m), np.zeros(m, dtype=np.int64)
    active = bnorm > 0
    for _ in range(maxiter):
        if not active.any():
            break
        term = term - lap @ term
        x += term
        iters += active
        rel = np.divide(np.sqrt(_coldot(term, term)), bnorm, out=np.zeros(m), where=bnorm > 0)
        active &= rel > tol
    if active.any():  # truncated: report the true residual of what is returned
        res = b - lap @ x
        rel = np.divide(np.sqrt(_coldot(res, res)), bnorm, out=np.zeros(m), where=bnorm > 0)
    return x, iters, rel


def _make_solver(lap: sp.csr_matrix, solver: str, tol: float, maxiter: int) -> Callable:
    """Return ``solve(B) -> (X, iterations, rel_residuals)`` for (n, m) float64 blocks."""
    if solver == "cg":
        return lambda b: _cg(lap, b, tol, maxiter)
    if solver == "series":
        return lambda b: _series(lap, b, tol, maxiter)
    from scipy.sparse.linalg import splu

    lu = splu(lap.tocsc())

    def direct(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = lu.solve(b)
        res, bnorm = b - lap @ x, np.sqrt(_coldot(b, b))
        rel = np.divide(np.sqrt(_coldot(res, res)), bnorm, out=np.zeros(b.shape[1]), where=bnorm > 0)
        return x, np.zeros(b.shape[1], dtype=np.int64), rel

    return direct


@dataclass(frozen=True)
class _Permuted:
    """``L`` with its image nodes renumbered for memory locality: ``lap = L[order][:, order]``."""

    lap: sp.csr_matrix
    order: np.ndarray
    inverse: np.ndarray


def _locality_order(lap: sp.csr_matrix, n_cls: int) -> _Permuted | None:
    """Renumber the image nodes of large graphs (more than ``REORDER_ABOVE`` nodes) by their
    strongest text neighbour, so that neighbouring images, which mostly share it, sit close in
    memory: the block products then read far fewer cache lines (about 2x faster at 1M nodes).
    Text nodes keep their numbers. Solving ``P L P^T (P x) = P b`` is the same system, so only
    rounding differs (about 1e-16). None for small graphs or when ``n_cls`` is not given.
    """
    n = lap.shape[0]
    if n <= REORDER_ABOVE or not 1 <= n_cls < n:
        return None
    rows = np.repeat(np.arange(n), np.diff(lap.indptr))
    text = (lap.indices < n_cls) & (rows >= n_cls)
    r, c, v = rows[text], lap.indices[text], lap.data[text]
    first = np.lexsort((v, r))  # per image row, its most negative text entry = largest weight
    first = first[np.r_[True, r[first][1:] != r[first][:-1]]] if len(first) else first
    key = np.full(n - n_cls, n_cls, dtype=np.int64)  # images without text edges go last
    key[r[first] - n_cls] = c[first]
    order = np.concatenate([np.arange(n_cls), n_cls + np.argsort(key, kind="stable")])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    permuted = lap[order]
    permuted.indices = inverse[permuted.indices].astype(permuted.indices.dtype)
    permuted.has_sorted_indices = False
    permuted.sort_indices()
    return _Permuted(permuted, order, inverse)


def _solve_blocks(
    lap: sp.csr_matrix,
    n_rhs: int,
    make_rhs: Callable[[int, int], np.ndarray],
    consume: Callable[[int, int, np.ndarray], None],
    *,
    solver: str,
    tol: float,
    maxiter: int,
    chunk: int,
    workers: int = 1,
    permuted: _Permuted | None = None,
) -> SolveInfo:
    """Solve ``L X = B`` for ``n_rhs`` right-hand sides, ``chunk`` columns at a time.

    ``make_rhs(c0, c1)`` returns the (C+N, c1-c0) float64 block; ``consume(c0, c1, X)`` receives
    the solution block, always in block order and in the calling thread. With ``workers > 1``
    (``cg``/``series``), that many blocks are solved at once in threads (scipy's sparse products
    and numpy release the GIL); each block is solved exactly as alone, so the result does not
    depend on ``workers``, and at most ``workers`` blocks are held at a time. Warns
    ZLaPConvergenceWarning if some column did not converge. With ``permuted`` (from
    :func:`_locality_order` of ``lap``), the blocks are solved in its node order and handed
    to ``make_rhs``/``consume`` in the original one.
    """
    if solver == "direct":
        permuted = None
    solve = _make_solver(lap if permuted is None else permuted.lap, solver, tol, maxiter)
    info = SolveInfo(solver=solver, tol=tol, maxiter=maxiter, n_rhs=n_rhs)
    start = time.perf_counter()
    blocks = [(c0, min(c0 + chunk, n_rhs)) for c0 in range(0, n_rhs, chunk)]

    def task(c0: int, c1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if permuted is None:
            return solve(make_rhs(c0, c1))
        x, iters, rel = solve(make_rhs(c0, c1)[permuted.order])
        return x[permuted.inverse], iters, rel

    def finish(c0: int, c1: int, result: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        x, iters, rel = result
        consume(c0, c1, x)
        info.iterations = max(info.iterations, int(iters.max(initial=0)))
        info.residual = max(info.residual, float(rel.max(initial=0.0)))
        if solver != "direct":
            info.n_unconverged += int((rel > tol).sum())

    workers = 1 if solver == "direct" else min(int(workers), len(blocks))
    if workers <= 1:
        for c0, c1 in blocks:
            finish(c0, c1, task(c0, c1))
    else:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="zlap-solve") as pool:
            pending: deque = deque()
            for c0, c1 in blocks:
                if len(pending) >= workers:  # bounded: consume the oldest before starting more
                    finish(*pending[0][:2], pending.popleft()[2].result())
                pending.append((c0, c1, pool.submit(task, c0, c1)))
            while pending:
                finish(*pending[0][:2], pending.popleft()[2].result())
    info.seconds = time.perf_counter() - start
    if not info.converged:
        warnings.warn(
            f"ZLaP {solver} solve did not converge: {info.n_unconverged}/{n_rhs} right-hand sides "
            f"above tol={tol:g} after maxiter={maxiter}, worst relative residual {info.residual:.3e}; "
            "the result is truncated (as in the reference). Raise maxiter, lower alpha or use "
            "solver='direct'.",
            ZLaPConvergenceWarning,
            stacklevel=3,
        )
    return info


def _onehot_rhs(n: int) -> Callable[[int, int], np.ndarray]:
    """RHS factory: columns e_c for c in [c0, c1) in R^n."""

    def make(c0: int, c1: int) -> np.ndarray:
        b = np.zeros((n, c1 - c0))
        b[np.arange(c0, c1), np.arange(c1 - c0)] = 1.0
        return b

    return make


# ----------------------------------------------------------------------------- transductive


def propagate_labels(
    lap: sp.csr_matrix,
    n_classes: int,
    *,
    solver: Solver = "cg",
    tol: float = 1e-6,
    maxiter: int = 50,
    chunk: int = 32,
    return_info: bool = False,
    workers: int = 1,
    dtype: type | np.dtype = np.float64,
) -> np.ndarray | tuple[np.ndarray, SolveInfo]:
    """Transductive scores from a built graph: ``F = (L^-1)[image rows, text columns]``.

    Args:
        lap: (C+N, C+N) CSR ``L`` from :func:`build_graph`.
        n_classes: C, the number of leading text nodes.
        solver, tol, maxiter, chunk, return_info, workers: see :func:`zlap_transductive`.
        dtype: of the returned scores (the solves are float64 either way); ``np.float32``
            halves the (N, C) result (relative rounding 6e-8).

    Returns:
        (N, C) scores of ``dtype`` (and the SolveInfo when ``return_info``).
    """
    _check_solver(solver, tol, maxiter, chunk)
    _check_workers(workers)
    n = lap.shape[0]
    if not (sp.issparse(lap) and lap.shape == (n, n) and 1 <= n_classes <= n):
        raise ZLaPError(f"lap must be a square sparse matrix with at least n_classes={n_classes} rows")
    out = np.empty((n - n_classes, n_classes), dtype=dtype)

    def consume(c0: int, c1: int, x: np.ndarray) -> None:
        out[:, c0:c1] = x[n_classes:]

    if lap.format != "csr" or lap.dtype != np.float64:
        lap = sp.csr_matrix(lap, dtype=np.float64)
    info = _solve_blocks(
        lap, n_classes, _onehot_rhs(n), consume, solver=solver, tol=tol, maxiter=maxiter, chunk=chunk,
        workers=workers, permuted=None if solver == "direct" else _locality_order(lap, n_classes),
    )  # fmt: skip
    return (out, info) if return_info else out


def zlap_transductive(
    image_feats: np.ndarray,
    text_feats: np.ndarray,
    *,
    k: int = 5,
    gamma: float = 5.0,
    alpha: float = 0.3,
    scale_sim: bool = False,
    k_text: int | None = None,
    knn: KnnPair | None = None,
    solver: Solver = "cg",
    tol: float = 1e-6,
    maxiter: int = 50,
    chunk: int = 32,
    return_info: bool = False,
    workers: int = 1,
) -> np.ndarray | tuple[np.ndarray, SolveInfo]:
    """Transductive ZLaP (spec section 4): score every image for every class.

    The graph is built on these images plus the C text nodes; for each class c, ``L f = e_c``
    is solved and ``F[i, c] = f[C + i]``. Scores are raw L^-1 entries (tiny, not calibrated;
    see :func:`calibrate_scores`). Prediction is ``F.argmax(1)``.

    Args:
        image_feats: (N, d) float32, L2-normalised.
        text_feats: (C, d) float32, L2-normalised.
        k, gamma, alpha, scale_sim, k_text, knn: graph options, see :func:`build_graph`.
        solver: ``"cg"`` (default; column-batched CG identical per column to the reference's
            CG), ``"series"`` (truncated Neumann series) or ``"direct"`` (sparse LU; small graphs).
        tol: relative residual target ``||r|| <= tol ||b||`` (reference: 1e-6).
        maxiter: iteration cap (reference: 50). When hit, ZLaPConvergenceWarning is emitted
            and the truncated result returned, as the reference does silently.
        chunk: number of classes solved together; memory ~ 5 * 8 * (N+C) * chunk bytes.
        return_info: also return the :class:`SolveInfo`.
        workers: blocks of ``chunk`` classes solved at once in threads (memory times
            ``workers``); the scores do not depend on it. Ignored by ``direct``.

    Returns:
        (N, C) float64 scores, or ``(scores, info)`` when ``return_info``.
    """
    graph, _, _ = _make_graph(
        image_feats, text_feats, k=k, gamma=gamma, alpha=alpha, scale_sim=scale_sim, k_text=k_text, knn=knn
    )
    return propagate_labels(
        graph.L,
        graph.n_classes,
        solver=solver,
        tol=tol,
        maxiter=maxiter,
        chunk=chunk,
        return_info=return_info,
        workers=workers,
    )


# ----------------------------------------------------------------------------- inductive


class ZLaPInductive:
    """Inductive ZLaP (spec sections 5 and 6): graph on an unlabeled set U, then score queries.

    ``fit`` builds the graph and L on U + text nodes and precomputes, streaming over classes,
    the sparse table of ``G = L^-1[:, :C]``: per node its argmax class id and value
    (``pseudo_labels_`` int64 (C+N_U,), ``pseudo_scores_`` float64 (C+N_U,)).

    Attributes after fit: ``graph_`` (ZLaPGraph), ``unlabeled_`` (N_U, d), ``text_`` (C, d),
    ``pseudo_labels_``, ``pseudo_scores_``, ``info_`` (dict: ``"fit"`` -> SolveInfo of the
    precompute or None, ``"scores"`` -> SolveInfo of the last exact scoring or None).
    """

    def __init__(
        self,
        k: int = 5,
        gamma: float = 5.0,
        alpha: float = 0.3,
        *,
        scale_sim: bool = False,
        k_text: int | None = None,
        solver: Solver = "cg",
        tol: float = 1e-6,
        maxiter: int = 50,
        chunk: int = 32,
        precompute_sparse: bool = True,
        workers: int = 1,
    ) -> None:
        _check_params(k, gamma, alpha, k_text)
        _check_solver(solver, tol, maxiter, chunk)
        _check_workers(workers)
        self.k, self.gamma, self.alpha = k, gamma, alpha
        self.scale_sim, self.k_text = scale_sim, k_text
        self.solver, self.tol, self.maxiter, self.chunk = solver, tol, maxiter, chunk
        self.precompute_sparse, self.workers = precompute_sparse, workers
        self.info_: dict[str, SolveInfo | None] = {"fit": None, "scores": None}

    def fit(
        self, unlabeled_feats: np.ndarray, text_feats: np.ndarray, *, knn: KnnPair | None = None
    ) -> ZLaPInductive:
        """Build the graph on U (N_U, d) and T (C, d), both float32 L2-normalised.

        ``knn``: optional precomputed U-vs-U kNN ``(D, I)`` of shape (N_U, min(k, N_U)), self
        matches included. Returns self.
        """
        self._build(unlabeled_feats, text_feats, knn)
        if self.precompute_sparse:
            self._precompute_sparse()
        return self

    def fit_predict(
        self,
        unlabeled_feats: np.ndarray,
        text_feats: np.ndarray,
        *,
        knn: KnnPair | None = None,
        dtype: type | np.dtype = np.float64,
    ) -> np.ndarray:
        """:meth:`fit`, and return the transductive scores of U from the same solves.

        One pass of C block solves gives both the sparse table (whatever
        ``precompute_sparse`` says) and ``F = (L^-1)[image rows, text columns]``, i.e. what
        ``fit`` followed by ``zlap_transductive`` on U computes with two passes, with the same
        solver settings. Returns (N_U, C) scores of ``dtype`` (``np.float32`` halves them; the
        table keeps float64 values). ``info_["fit"]`` holds the SolveInfo.
        """
        self._build(unlabeled_feats, text_feats, knn)
        n_cls = self.graph_.n_classes
        out = np.empty((self.graph_.L.shape[0] - n_cls, n_cls), dtype=dtype)

        def consume(c0: int, c1: int, x: np.ndarray) -> None:
            out[:, c0:c1] = x[n_cls:]

        self._precompute_sparse(consume)
        return out

    def _build(self, unlabeled_feats: np.ndarray, text_feats: np.ndarray, knn: KnnPair | None) -> None:
        _check_solver(self.solver, self.tol, self.maxiter, self.chunk)
        graph, _, _ = _make_graph(
            unlabeled_feats,
            text_feats,
            k=self.k,
            gamma=self.gamma,
            alpha=self.alpha,
            scale_sim=self.scale_sim,
            k_text=self.k_text,
            knn=knn,
        )
        self.graph_ = graph
        self._perm: _Permuted | None | bool = False  # not computed yet
        self.unlabeled_ = np.ascontiguousarray(unlabeled_feats)
        self.text_ = np.ascontiguousarray(text_feats)
        self.info_ = {"fit": None, "scores": None}

    def _permuted(self) -> _Permuted | None:
        """The graph in locality order (large graphs only), computed once per fit."""
        if self.solver == "direct":
            return None
        if getattr(self, "_perm", False) is False:
            self._perm = _locality_order(self.graph_.L, self.graph_.n_classes)
        return self._perm  # type: ignore[return-value]

    def drop_graph(self) -> ZLaPInductive:
        """Free the graph (L and its reordered copy), keeping what sparse scoring needs (the
        table, U, T, and the similarity range); exact scoring then needs a new :meth:`fit`."""
        self.graph_ = ZLaPGraph(None, self.graph_.n_classes, self.graph_.sim_range)  # type: ignore[arg-type]
        self._perm = None
        return self

    @classmethod
    def from_table(
        cls,
        unlabeled_feats: np.ndarray,
        text_feats: np.ndarray,
        pseudo_labels: np.ndarray,
        pseudo_scores: np.ndarray,
        *,
        k: int = 5,
        gamma: float = 5.0,
        alpha: float = 0.3,
        k_text: int | None = None,
        sim_range: tuple[float, float] | None = None,
    ) -> ZLaPInductive:
        """Rebuild a model for sparse scoring from a stored table (no graph, no solve).

        ``pseudo_labels`` int64 and ``pseudo_scores`` float64, both (C+N_U,), as left by
        :meth:`fit` in ``pseudo_labels_``/``pseudo_scores_``. Only ``scores(..., sparse=True)``
        works on the result; the exact form needs the graph, i.e. :meth:`fit`.
        """
        u = _check_feats("unlabeled_feats", unlabeled_feats)
        t = _check_feats("text_feats", text_feats, dim=u.shape[1])
        n_nodes = t.shape[0] + u.shape[0]
        if np.shape(pseudo_labels) != (n_nodes,) or np.shape(pseudo_scores) != (n_nodes,):
            raise ZLaPError(f"pseudo_labels and pseudo_scores must have shape ({n_nodes},)")
        model = cls(k, gamma, alpha, scale_sim=sim_range is not None, k_text=k_text, precompute_sparse=False)
        model.graph_ = ZLaPGraph(None, t.shape[0], sim_range)  # type: ignore[arg-type]
        model.unlabeled_, model.text_ = np.ascontiguousarray(u), np.ascontiguousarray(t)
        model.pseudo_labels_ = np.asarray(pseudo_labels, dtype=np.int64)
        model.pseudo_scores_ = np.asarray(pseudo_scores, dtype=np.float64)
        return model

    def _precompute_sparse(self, also: Callable[[int, int, np.ndarray], None] | None = None) -> None:
        """Section 6: streamed per-row argmax of G = L^-1[:, :C]; memory O((N_U+C) * chunk)
        per worker. ``also(c0, c1, X)`` receives every solution block too."""
        lap, n_cls = self.graph_.L, self.graph_.n_classes
        n = lap.shape[0]
        best_val, best_id = np.full(n, -np.inf), np.zeros(n, dtype=np.int64)

        def consume(c0: int, c1: int, x: np.ndarray) -> None:
            arg = x.argmax(axis=1)
            val = x[np.arange(n), arg]
            better = val > best_val  # strict: earlier class wins ties, like a global argmax
            best_val[better], best_id[better] = val[better], arg[better] + c0
            if also is not None:
                also(c0, c1, x)

        self.info_["fit"] = _solve_blocks(
            lap,
            n_cls,
            _onehot_rhs(n),
            consume,
            solver=self.solver,
            tol=self.tol,
            maxiter=self.maxiter,
            chunk=self.chunk,
            workers=self.workers,
            permuted=self._permuted(),
        )
        self.pseudo_labels_, self.pseudo_scores_ = best_id, best_val

    def _query_edges(self, q: np.ndarray, knn: KnnPair | None) -> tuple[np.ndarray, np.ndarray]:
        """Section 5.2 weights: (nodes, weights), each (Q, k_it + k_ii), nodes int64, weights float64."""
        n_cls, n_u = self.graph_.n_classes, self.unlabeled_.shape[0]
        k_ii, k_it = min(self.k, n_u), min(self.k if self.k_text is None else self.k_text, n_cls)
        d_ii, i_ii = _knn(q, self.unlabeled_, k_ii) if knn is None else _check_knn(knn, q.shape[0], k_ii, n_u)
        d_it, i_it = _knn(q, self.text_, k_it)
        w_ii, w_it = np.maximum(d_ii, 0.0), np.maximum(d_it, 0.0)  # clip first ...
        if self.graph_.sim_range is not None:  # ... then rescale (reverse of the graph), no re-clip
            lo, hi = self.graph_.sim_range
            w_ii, w_it = (w_ii - lo) / (hi - lo), (w_it - lo) / (hi - lo)
        w_it = w_it**self.gamma
        valid = np.concatenate([i_it >= 0, i_ii >= 0], axis=1)  # ids -1 (ANN misses) -> weight 0
        nodes = np.where(valid, np.concatenate([i_it, i_ii + n_cls], axis=1), 0)
        return nodes, np.where(valid, np.concatenate([w_it, w_ii], axis=1), 0.0)

    def scores(
        self, query_feats: np.ndarray, sparse: bool = False, *, knn: KnnPair | None = None
    ) -> np.ndarray:
        """Scores of Q queries for the C classes, (Q, C) float64.

        ``sparse=False``: exact form, ``z = L^-1 y_q`` and ``score = z[:C]``, solved for all
        queries as blocks of ``chunk`` columns (same result as one solve per query).
        ``sparse=True``: ``score = sum_v y_q[v] * G_hat[v, :]`` from the precomputed table,
        O(k) per query after the kNN search. ``query_feats``: (Q, d) float32 L2-normalised.
        ``knn``: optional precomputed query-vs-U kNN ``(D, I)``, (Q, min(k, N_U)).
        """
        if not hasattr(self, "graph_"):
            raise ZLaPError("ZLaPInductive is not fitted; call fit(unlabeled_feats, text_feats) first")
        q = _check_feats("query_feats", query_feats, dim=self.unlabeled_.shape[1])
        nodes, weights = self._query_edges(q, knn)
        if sparse:
            return self._sparse_scores(nodes, weights)
        return self._exact_scores(nodes, weights)

    def _sparse_scores(self, nodes: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Vote of the neighbours' pseudo-labels: (Q, C) float64."""
        if not hasattr(self, "pseudo_labels_"):
            raise ZLaPError("sparse scoring needs the sparse table; fit with precompute_sparse=True")
        n_q, n_cls = nodes.shape[0], self.graph_.n_classes
        flat = np.arange(n_q)[:, None] * n_cls + self.pseudo_labels_[nodes]
        vals = weights * self.pseudo_scores_[nodes]
        return np.bincount(flat.ravel(), vals.ravel(), minlength=n_q * n_cls).reshape(n_q, n_cls)

    def _exact_scores(self, nodes: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Block solves ``L Z = Y``; returns Z[:C].T, (Q, C) float64."""
        lap, n_cls = self.graph_.L, self.graph_.n_classes
        if lap is None:
            raise ZLaPError("exact scoring needs the graph: this model was rebuilt from a table, use sparse=True")
        n_q, width = nodes.shape
        out = np.empty((n_q, n_cls))

        def make(c0: int, c1: int) -> np.ndarray:
            b = np.zeros((lap.shape[0], c1 - c0))
            cols = np.repeat(np.arange(c1 - c0), width)
            np.add.at(b, (nodes[c0:c1].ravel(), cols), weights[c0:c1].ravel())
            return b

        def consume(c0: int, c1: int, x: np.ndarray) -> None:
            out[c0:c1] = x[:n_cls].T

        self.info_["scores"] = _solve_blocks(
            lap, n_q, make, consume, solver=self.solver, tol=self.tol, maxiter=self.maxiter, chunk=self.chunk,
            workers=self.workers, permuted=self._permuted(),
        )  # fmt: skip
        return out


# ----------------------------------------------------------------------------- calibration


def calibrate_scores(scores: np.ndarray, *, method: Literal["zscore", "rank"] = "zscore") -> np.ndarray:
    """Turn raw ZLaP scores into per-label confidences in [0, 1], comparable across labels.

    Raw scores are L^-1 entries whose scale differs per label (text nodes of different degree),
    so one global threshold is meaningless. Each label (column) is normalised over the corpus
    (the rows given), independently of the other labels:

    * ``"zscore"`` (default): ``conf = 1 / (1 + exp(-(s - mean_c) / std_c))`` with the column's
      mean and population std. 0.5 is the label's corpus average; ~0.95 is 3 std above it.
      A constant column maps to 0.5.
    * ``"rank"``: ``conf = (r - 1) / (N - 1)`` with r the average rank (ties share a rank) of
      the score in its column; i.e. the fraction of the corpus scored below. N=1 gives 0.5.

    Both rules are non-decreasing in the score within each label and ignore other labels.

    Args:
        scores: (N, C) real array (N images or queries, C labels), finite.

    Returns:
        (N, C) float64 confidences in [0, 1].
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ZLaPError(f"scores must be a non-empty 2-D array (N, C), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ZLaPError("scores contain NaN or infinite values")
    if method == "zscore":
        from scipy.special import expit

        std = s.std(axis=0)
        z = np.divide(s - s.mean(axis=0), std, out=np.zeros_like(s), where=std > 0)
        return expit(z)
    if method == "rank":
        if s.shape[0] == 1:
            return np.full_like(s, 0.5)
        from scipy.stats import rankdata

        return (rankdata(s, axis=0) - 1.0) / (s.shape[0] - 1)
    raise ZLaPError(f"method must be 'zscore' or 'rank', got {method!r}")
