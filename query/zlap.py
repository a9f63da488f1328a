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

from collections.abc import Callable
from typing import Literal

import numpy as np

from query.zlap_graph import (
    KnnPair,
    ZLaPError,
    ZLaPGraph,
    build_graph,
    check_feats,
    check_knn,
    check_params,
    exact_knn,
    make_graph,
)
from query.zlap_solve import (
    Permuted,
    SolveInfo,
    Solver,
    ZLaPConvergenceWarning,
    check_solver,
    check_workers,
    locality_order,
    onehot_rhs,
    propagate_labels,
    seeded_rhs,
    solve_blocks,
)

Seeds = tuple[np.ndarray, np.ndarray, np.ndarray]  # (rows, cols, weights) of labelled images

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
    graph, _, _ = make_graph(
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
        check_params(k, gamma, alpha, k_text)
        check_solver(solver, tol, maxiter, chunk)
        check_workers(workers)
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
        seeds: Seeds | Callable[[ZLaPInductive], Seeds | None] | None = None,
    ) -> np.ndarray:
        """:meth:`fit`, and return the transductive scores of U from the same solves.

        ``seeds``: labelled images beside the text nodes, ``(rows, cols, weights)`` (n,) each:
        class ``cols[j]``'s right-hand side gets ``weights[j]`` at image ``rows[j]`` of U (an
        extension, not in the reference; see :func:`query.zlap_solve.seeded_rhs`). None (the
        default) solves exactly the reference's ``L f = e_c``; the table reflects the seeds. A
        function of the model with its graph built may return them (to choose seed weights on the
        graph, with :meth:`solve`).

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

        if callable(seeds):
            seeds = seeds(self)
        rhs = None if seeds is None else seeded_rhs(self.graph_.L.shape[0], n_cls, *seeds)
        self._precompute_sparse(consume, rhs)
        return out

    def solve(
        self,
        n_rhs: int,
        make_rhs: Callable[[int, int], np.ndarray],
        consume: Callable[[int, int, np.ndarray], None],
    ) -> SolveInfo:
        """Solve ``L X = B`` on the built graph with this model's solver settings (see
        :func:`query.zlap_solve.solve_blocks` for ``make_rhs`` and ``consume``)."""
        return solve_blocks(
            self.graph_.L,
            n_rhs,
            make_rhs,
            consume,
            solver=self.solver,
            tol=self.tol,
            maxiter=self.maxiter,
            chunk=self.chunk,
            workers=self.workers,
            permuted=self._permuted(),
        )

    def _build(self, unlabeled_feats: np.ndarray, text_feats: np.ndarray, knn: KnnPair | None) -> None:
        check_solver(self.solver, self.tol, self.maxiter, self.chunk)
        graph, _, _ = make_graph(
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
        self._perm: Permuted | None | bool = False  # not computed yet
        self.unlabeled_ = np.ascontiguousarray(unlabeled_feats)
        self.text_ = np.ascontiguousarray(text_feats)
        self.info_ = {"fit": None, "scores": None}

    def _permuted(self) -> Permuted | None:
        """The graph in locality order (large graphs only), computed once per fit."""
        if self.solver == "direct":
            return None
        if getattr(self, "_perm", False) is False:
            self._perm = locality_order(self.graph_.L, self.graph_.n_classes)
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
        u = check_feats("unlabeled_feats", unlabeled_feats)
        t = check_feats("text_feats", text_feats, dim=u.shape[1])
        n_nodes = t.shape[0] + u.shape[0]
        if np.shape(pseudo_labels) != (n_nodes,) or np.shape(pseudo_scores) != (n_nodes,):
            raise ZLaPError(f"pseudo_labels and pseudo_scores must have shape ({n_nodes},)")
        model = cls(k, gamma, alpha, scale_sim=sim_range is not None, k_text=k_text, precompute_sparse=False)
        model.graph_ = ZLaPGraph(None, t.shape[0], sim_range)  # type: ignore[arg-type]
        model.unlabeled_, model.text_ = np.ascontiguousarray(u), np.ascontiguousarray(t)
        model.pseudo_labels_ = np.asarray(pseudo_labels, dtype=np.int64)
        model.pseudo_scores_ = np.asarray(pseudo_scores, dtype=np.float64)
        return model

    def _precompute_sparse(
        self,
        also: Callable[[int, int, np.ndarray], None] | None = None,
        rhs: Callable[[int, int], np.ndarray] | None = None,
    ) -> None:
        """Section 6: streamed per-row argmax of G = L^-1[:, :C]; memory O((N_U+C) * chunk)
        per worker. ``also(c0, c1, X)`` receives every solution block too; ``rhs``: another
        right-hand side factory than the one-hot columns (seeds)."""
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

        self.info_["fit"] = self.solve(n_cls, onehot_rhs(n) if rhs is None else rhs, consume)
        self.pseudo_labels_, self.pseudo_scores_ = best_id, best_val

    def _query_edges(self, q: np.ndarray, knn: KnnPair | None) -> tuple[np.ndarray, np.ndarray]:
        """Section 5.2 weights: (nodes, weights), each (Q, k_it + k_ii), nodes int64, weights float64."""
        n_cls, n_u = self.graph_.n_classes, self.unlabeled_.shape[0]
        k_ii, k_it = min(self.k, n_u), min(self.k if self.k_text is None else self.k_text, n_cls)
        d_ii, i_ii = (
            exact_knn(q, self.unlabeled_, k_ii) if knn is None else check_knn(knn, q.shape[0], k_ii, n_u)
        )
        d_it, i_it = exact_knn(q, self.text_, k_it)
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
        q = check_feats("query_feats", query_feats, dim=self.unlabeled_.shape[1])
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
            raise ZLaPError(
                "exact scoring needs the graph: this model was rebuilt from a table, use sparse=True"
            )
        n_q, width = nodes.shape
        out = np.empty((n_q, n_cls))

        def make(c0: int, c1: int) -> np.ndarray:
            b = np.zeros((lap.shape[0], c1 - c0))
            cols = np.repeat(np.arange(c1 - c0), width)
            np.add.at(b, (nodes[c0:c1].ravel(), cols), weights[c0:c1].ravel())
            return b

        def consume(c0: int, c1: int, x: np.ndarray) -> None:
            out[c0:c1] = x[:n_cls].T

        self.info_["scores"] = self.solve(n_q, make, consume)
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
