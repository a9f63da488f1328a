"""ZLaP's solvers: ``L X = B`` for blocks of right-hand sides, by conjugate gradients (as the
reference), a Neumann series or a direct factorisation, in threads, optionally in a
cache-friendly node order; never anything dense of the graph's size.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from query.zlap_graph import ZLaPError

Solver = Literal["cg", "series", "direct"]
_SOLVERS = ("cg", "series", "direct")
REORDER_ABOVE = 200_000  # graphs with more nodes are solved in a cache-friendly node order


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


def check_solver(solver: str, tol: float, maxiter: int, chunk: int) -> None:
    """Validate the solver options."""
    if solver not in _SOLVERS:
        raise ZLaPError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise ZLaPError(f"tol must be a positive number, got {tol!r}")
    for name, v in (("maxiter", maxiter), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ZLaPError(f"{name} must be an integer >= 1, got {v!r}")


def check_workers(workers: int) -> None:
    """Validate the thread count of the block solves."""
    if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
        raise ZLaPError(f"workers must be an integer >= 1, got {workers!r}")


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
class Permuted:
    """``L`` with its image nodes renumbered for memory locality: ``lap = L[order][:, order]``."""

    lap: sp.csr_matrix
    order: np.ndarray
    inverse: np.ndarray


def locality_order(lap: sp.csr_matrix, n_cls: int) -> Permuted | None:
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
    return Permuted(permuted, order, inverse)


def solve_blocks(
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
    permuted: Permuted | None = None,
) -> SolveInfo:
    """Solve ``L X = B`` for ``n_rhs`` right-hand sides, ``chunk`` columns at a time.

    ``make_rhs(c0, c1)`` returns the (C+N, c1-c0) float64 block; ``consume(c0, c1, X)`` receives
    the solution block, always in block order and in the calling thread. With ``workers > 1``
    (``cg``/``series``), that many blocks are solved at once in threads (scipy's sparse products
    and numpy release the GIL); each block is solved exactly as alone, so the result does not
    depend on ``workers``, and at most ``workers`` blocks are held at a time. Warns
    ZLaPConvergenceWarning if some column did not converge. With ``permuted`` (from
    :func:`locality_order` of ``lap``), the blocks are solved in its node order and handed
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


def onehot_rhs(n: int) -> Callable[[int, int], np.ndarray]:
    """RHS factory: columns e_c for c in [c0, c1) in R^n."""

    def make(c0: int, c1: int) -> np.ndarray:
        b = np.zeros((n, c1 - c0))
        b[np.arange(c0, c1), np.arange(c1 - c0)] = 1.0
        return b

    return make


def seeded_rhs(
    n: int, n_cls: int, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray
) -> Callable[[int, int], np.ndarray]:
    """RHS factory: columns ``e_c`` plus, for each seed j, ``weights[j]`` at image node
    ``n_cls + rows[j]`` of column ``cols[j]`` (labelled image nodes beside the text node; a
    negative weight for a rejected image). With no seeds it is :func:`onehot_rhs`."""
    onehot = onehot_rhs(n)
    rows, cols, weights = np.asarray(rows, np.int64), np.asarray(cols, np.int64), np.asarray(weights, float)

    def make(c0: int, c1: int) -> np.ndarray:
        b = onehot(c0, c1)
        sel = (cols >= c0) & (cols < c1)
        np.add.at(b, (n_cls + rows[sel], cols[sel] - c0), weights[sel])
        return b

    return make


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
    check_solver(solver, tol, maxiter, chunk)
    check_workers(workers)
    n = lap.shape[0]
    if not (sp.issparse(lap) and lap.shape == (n, n) and 1 <= n_classes <= n):
        raise ZLaPError(f"lap must be a square sparse matrix with at least n_classes={n_classes} rows")
    out = np.empty((n - n_classes, n_classes), dtype=dtype)

    def consume(c0: int, c1: int, x: np.ndarray) -> None:
        out[:, c0:c1] = x[n_classes:]

    if lap.format != "csr" or lap.dtype != np.float64:
        lap = sp.csr_matrix(lap, dtype=np.float64)
    info = solve_blocks(
        lap,
        n_classes,
        onehot_rhs(n),
        consume,
        solver=solver,
        tol=tol,
        maxiter=maxiter,
        chunk=chunk,
        workers=workers,
        permuted=None if solver == "direct" else locality_order(lap, n_classes),
    )
    return (out, info) if return_info else out
