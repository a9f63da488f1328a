"""Tests of query.zlap against a dense reference written straight from docs/ZLAP.md."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from query.zlap import (
    ZLaPConvergenceWarning,
    ZLaPError,
    ZLaPInductive,
    build_graph,
    calibrate_scores,
    propagate_labels,
    zlap_transductive,
)

# ----------------------------------------------------------------------------- helpers

# Exact solvers differ from the float64 reference only through the float32 similarities.
F32 = 1e-7


def unit(a: np.ndarray) -> np.ndarray:
    """Row-normalise to float32."""
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def make_data(seed=0, n=60, c=4, d=16, s_img=0.7, s_txt=1.0, gap=1.5, n_query=0):
    """Text = class centre + shared offset + noise (modality gap); images = centre + noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) / np.sqrt(d)
    offset = rng.normal(size=d) / np.sqrt(d) * gap
    text = unit(centres + offset + rng.normal(size=(c, d)) / np.sqrt(d) * s_txt)
    labels = rng.integers(0, c, n + n_query)
    imgs = unit(centres[labels] + rng.normal(size=(n + n_query, d)) / np.sqrt(d) * s_img)
    return imgs[:n], text, labels[:n], imgs[n:], labels[n:]


def ref_lists(x, t, k, gamma, scale_sim):
    """Spec 2.1-2.7 in float64: neighbour ids and final edge weights, plus (m, M)."""
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    s_all, u_all = x64 @ x64.T, x64 @ t64.T
    nn = np.argsort(-s_all, axis=1, kind="stable")[:, : min(k, len(x))]
    nt = np.argsort(-u_all, axis=1, kind="stable")[:, : min(k, len(t))]
    s, u = np.take_along_axis(s_all, nn, 1), np.take_along_axis(u_all, nt, 1)
    rng_ = None
    if scale_sim:
        lo, hi = min(s.min(), u.min()), max(s.max(), u.max())
        s, u, rng_ = (s - lo) / (hi - lo), (u - lo) / (hi - lo), (lo, hi)
    return nn, np.maximum(s, 0), nt, np.maximum(u, 0) ** gamma, rng_


def ref_graph(x, t, k=5, gamma=5.0, alpha=0.3, scale_sim=False):
    """Dense W, degrees, L and (m, M), built literally from spec section 2."""
    n, c = len(x), len(t)
    nn, s, nt, u, rng_ = ref_lists(x, t, k, gamma, scale_sim)
    a = np.zeros((c + n, c + n))
    for i in range(n):
        a[c + i, c + nn[i]] = s[i]
        a[c + i, nt[i]] = u[i]
    w = a + a.T
    np.fill_diagonal(w, 0.0)
    deg = w.sum(1)
    deg[deg == 0] = 1.0
    wn = w / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    return w, deg, np.eye(c + n) - alpha * wn, rng_


def ref_query_y(q, x, t, c, k=5, gamma=5.0, rng_=None):
    """Spec 5.2: y_q in R^{C+N} (clip, then rescale in proxy mode, power on text only)."""
    q64 = q.astype(np.float64)
    s_all, u_all = q64 @ x.astype(np.float64).T, q64 @ t.astype(np.float64).T
    y = np.zeros(c + len(x))
    nn = np.argsort(-s_all)[: min(k, len(x))]
    nt = np.argsort(-u_all)[: min(k, c)]
    s, u = np.maximum(s_all[nn], 0), np.maximum(u_all[nt], 0)
    if rng_ is not None:
        s, u = (s - rng_[0]) / (rng_[1] - rng_[0]), (u - rng_[0]) / (rng_[1] - rng_[0])
    y[c + nn], y[nt] = s, u**gamma
    return y


def ref_transductive(lap, c):
    """F = (L^-1)[images, texts] by spsolve."""
    g = spsolve(sp.csc_matrix(lap), np.eye(lap.shape[0])[:, :c])
    return g[c:]


def dense(m):
    return m.toarray() if sp.issparse(m) else m


# ----------------------------------------------------------------------------- exactness


def test_graph_matches_reference():
    x, t, *_ = make_data(1)
    _, _, lap, _ = ref_graph(x, t)
    np.testing.assert_allclose(dense(build_graph(x, t)), lap, atol=1e-7)


@pytest.mark.parametrize("solver,atol", [("cg", 3e-6), ("series", 3e-6), ("direct", F32)])
def test_transductive_matches_spsolve(solver, atol):
    x, t, *_ = make_data(2)
    _, _, lap, _ = ref_graph(x, t)
    want = ref_transductive(lap, len(t))
    got, info = zlap_transductive(x, t, solver=solver, return_info=True)
    assert got.shape == (len(x), len(t))
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    assert info.converged and info.residual <= 1e-6


def test_transductive_tight_tolerance_and_chunking():
    x, t, *_ = make_data(3)
    want = ref_transductive(ref_graph(x, t)[2], len(t))
    for chunk in (1, 3, 64):
        got = zlap_transductive(x, t, tol=1e-12, maxiter=200, chunk=chunk)
        np.testing.assert_allclose(got, want, atol=F32, rtol=0)


def ref_cg(lap, b, tol=1e-6, maxiter=50):
    """One-vector port of cupyx.scipy.sparse.linalg.cg (x0=0, no preconditioner)."""
    x, r, p, rho, iters = np.zeros_like(b), b.copy(), None, 0.0, 0
    atol = tol * np.linalg.norm(b)
    while iters < maxiter:
        rho1, rho = rho, r @ r
        p = r.copy() if iters == 0 else r + (rho / rho1) * p
        q = lap @ p
        step = rho / (p @ q)
        x, r, iters = x + step * p, r - step * q, iters + 1
        if np.linalg.norm(r) <= atol:
            break
    return x, iters


@pytest.mark.parametrize("alpha,maxiter", [(0.3, 50), (0.97, 4)])
def test_batched_cg_equals_reference_cg_per_class(alpha, maxiter):
    x, t, *_ = make_data(19)
    lap, c = build_graph(x, t, alpha=alpha), len(t)
    cols = [ref_cg(lap, np.eye(lap.shape[0])[:, j], maxiter=maxiter) for j in range(c)]
    with pytest.warns(ZLaPConvergenceWarning) if maxiter < 10 else np.errstate():
        got, info = propagate_labels(lap, c, maxiter=maxiter, chunk=3, return_info=True)
    np.testing.assert_allclose(got, np.stack([v[c:] for v, _ in cols], 1), atol=1e-13, rtol=0)
    assert info.iterations == max(n for _, n in cols)


def test_inductive_exact_and_sparse_match_reference():
    x, t, _, q, _ = make_data(4, n_query=7)
    c = len(t)
    _, _, lap, _ = ref_graph(x, t)
    g = spsolve(sp.csc_matrix(lap), np.eye(len(lap))[:, :c])
    g_hat = np.zeros_like(g)
    rows = np.arange(len(g))
    g_hat[rows, g.argmax(1)] = g[rows, g.argmax(1)]
    ys = np.stack([ref_query_y(qi, x, t, c) for qi in q])
    exact_ref = np.stack([spsolve(sp.csc_matrix(lap), y)[:c] for y in ys])
    model = ZLaPInductive().fit(x, t)
    np.testing.assert_allclose(model.scores(q), exact_ref, atol=3e-6, rtol=0)
    np.testing.assert_allclose(model.scores(q, sparse=True), ys @ g_hat, atol=3e-6, rtol=0)
    np.testing.assert_allclose(ZLaPInductive(chunk=1).fit(x, t).scores(q), model.scores(q), atol=1e-14)
    direct = ZLaPInductive(solver="direct", chunk=2).fit(x, t)
    np.testing.assert_allclose(direct.scores(q), exact_ref, atol=F32, rtol=0)
    np.testing.assert_array_equal(direct.pseudo_labels_, g.argmax(1))
    np.testing.assert_allclose(direct.pseudo_scores_, g.max(1), atol=F32)


def test_precomputed_knn_is_used():
    import faiss

    x, t, *_ = make_data(5)
    dist, idx = faiss.knn(x, x, 5, metric=faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_array_equal(dense(build_graph(x, t, knn=(dist, idx))), dense(build_graph(x, t)))
    idx_missing = idx.copy()
    idx_missing[:, -1] = -1  # an ANN index returning fewer hits
    got = dense(build_graph(x, t, knn=(dist, idx_missing)))
    np.testing.assert_allclose(got, dense(build_graph(x, t, k=4, k_text=5)), atol=1e-12)


# ----------------------------------------------------------------------------- quirks


def circle_points():
    """4 images on a circle at angles 0, .1, .3, .7 and one text vector."""
    ang = np.array([0.0, 0.1, 0.3, 0.7])
    x = unit(np.stack([np.cos(ang), np.sin(ang), np.zeros(4)], 1))
    t = unit(np.array([[1.0, 0.0, 1.0]]))
    return x, t, ang


def test_self_is_in_transductive_knn_and_sum_symmetrisation():
    x, t, ang = circle_points()
    w = dense(build_graph(x, t, k=2, gamma=1.0, output="W"))[1:, 1:]
    cos = np.cos(ang[:, None] - ang[None, :])
    want = np.zeros((4, 4))
    want[0, 1] = want[1, 0] = 2 * cos[0, 1]  # mutual pair counts twice
    want[1, 2] = want[2, 1] = cos[1, 2]  # 2 -> 1 only
    want[2, 3] = want[3, 2] = cos[2, 3]  # 3 -> 2 only
    np.testing.assert_allclose(w, want, atol=1e-6)  # k=2: self + 1 real neighbour, zero diagonal


def test_k5_gives_four_real_neighbours():
    x, t, *_ = make_data(6)
    w = dense(build_graph(x, t, output="W"))[4:, 4:]
    order = np.argsort(-(x @ x.T), axis=1)[:, 1:]  # non-self neighbours, nearest first
    top4 = [set(r[:4]) for r in order]
    for i in range(len(x)):
        want = top4[i] | {j for j in range(len(x)) if i in top4[j]}
        assert set(np.flatnonzero(w[i])) == want
        assert order[i, 4] not in want or i in top4[order[i, 4]]


def test_power_on_text_edges_only():
    x, t, *_ = make_data(7)
    w1 = dense(build_graph(x, t, gamma=1.0, output="W"))
    w5 = dense(build_graph(x, t, gamma=5.0, output="W"))
    c = len(t)
    np.testing.assert_array_equal(w1[c:, c:], w5[c:, c:])
    np.testing.assert_allclose(w5[c:, :c], w1[c:, :c] ** 5, rtol=1e-12)
    u = x.astype(np.float64) @ t.astype(np.float64).T
    nz = w1[c:, :c] > 0
    np.testing.assert_allclose(w1[c:, :c][nz], u[nz], atol=1e-6)


def test_negative_similarities_are_clipped():
    rng = np.random.default_rng(8)
    x, t = unit(rng.normal(size=(8, 3))), unit(rng.normal(size=(2, 3)))
    w = dense(build_graph(x, t, k=8, gamma=3.0, output="W"))
    s, u = x.astype(np.float64) @ x.T, x.astype(np.float64) @ t.T
    assert (s < 0).any() and (u < 0).any()
    want_img = 2 * np.maximum(s, 0)  # k = N: every pair is mutual
    np.fill_diagonal(want_img, 0)
    np.testing.assert_allclose(w[2:, 2:], want_img, atol=1e-6)
    np.testing.assert_allclose(w[2:, :2], np.maximum(u, 0) ** 3, atol=1e-6)


def test_isolated_label_scores_exactly_zero():
    x, t, *_ = make_data(9, c=8, gap=0.0)
    x, t = np.pad(x, ((0, 0), (0, 1))), np.pad(t, ((0, 0), (0, 1)))
    t = np.concatenate([t, np.eye(1, x.shape[1], x.shape[1] - 1, dtype=np.float32)])  # orthogonal class
    w = dense(build_graph(x, t, k_text=2, output="W"))
    assert w[8].sum() == 0  # degree 0 -> 1, no NaN
    f = zlap_transductive(x, t, k_text=2)
    assert np.all(f[:, 8] == 0.0) and np.isfinite(f).all()
    model = ZLaPInductive(k_text=2).fit(x, t)
    assert model.pseudo_labels_[8] == 8 and model.pseudo_scores_[8] == pytest.approx(1.0)


def test_few_classes_fully_connect_images_to_text():
    rng = np.random.default_rng(10)
    x, t = unit(np.abs(rng.normal(size=(30, 8)))), unit(np.abs(rng.normal(size=(3, 8))))
    assert (x @ t.T > 0).all()
    w = dense(build_graph(x, t, k=5, output="W"))
    assert (w[3:, :3] > 0).all()  # k_it = min(5, 3) = 3: every image links to every class


def test_inductive_query_is_not_degree_normalised():
    x, t, _, q, _ = make_data(11, n_query=3)
    c = len(t)
    _, deg, lap, _ = ref_graph(x, t)
    model = ZLaPInductive().fit(x, t)
    got = model.scores(q)
    raw = np.stack([spsolve(sp.csc_matrix(lap), ref_query_y(qi, x, t, c))[:c] for qi in q])
    normed = np.stack(
        [
            spsolve(sp.csc_matrix(lap), (y := ref_query_y(qi, x, t, c)) / np.sqrt(deg) / np.sqrt(y.sum()))[:c]
            for qi in q
        ]
    )
    np.testing.assert_allclose(got, raw, atol=3e-6, rtol=0)
    assert not np.allclose(got, normed, atol=1e-3)


def test_proxy_mode_graph_rescales_then_clips():
    rng = np.random.default_rng(12)
    x = unit(np.abs(rng.normal(size=(40, 6))) + np.r_[2.0, 0, 0, 0, 0, 0])
    t = unit(np.concatenate([np.abs(rng.normal(size=(2, 6))), -np.abs(rng.normal(size=(1, 6)))]))
    w_ref, _, _, rng_ = ref_graph(x, t, k=5, gamma=3.0, scale_sim=True)
    assert rng_[0] < 0  # a negative list entry: clip-then-rescale would give it a positive weight
    w = dense(build_graph(x, t, k=5, gamma=3.0, scale_sim=True, output="W"))
    np.testing.assert_allclose(w, w_ref, atol=1e-6)
    assert not np.allclose(w, ref_graph_clip_first(x, t), atol=1e-3)


def test_proxy_mode_query_clips_then_rescales():
    rng = np.random.default_rng(13)
    x = unit(np.abs(rng.normal(size=(40, 6))) + np.r_[2.0, 0, 0, 0, 0, 0])  # all sims positive
    t = unit(np.abs(rng.normal(size=(3, 6))) + np.r_[1.0, 0, 0, 0, 0, 0])
    _, _, lap, rng_ = ref_graph(x, t, k=5, gamma=3.0, scale_sim=True)
    assert rng_[0] > 0
    q = unit(np.array([[-0.3, 0.2, 0.1, 0.1, 0.1, 0.1]]))  # sims below m, some negative
    model = ZLaPInductive(5, 3.0, 0.3, scale_sim=True, solver="direct").fit(x, t)
    y = ref_query_y(q[0], x, t, 3, k=5, gamma=3.0, rng_=rng_)
    assert (y[3:] < 0).any() and (y[:3] < 0).any()  # rescaled after clipping, never re-clipped
    want = spsolve(sp.csc_matrix(lap), y)[:3]
    got = model.scores(q)[0]
    np.testing.assert_allclose(got, want, atol=F32, rtol=1e-6)  # |scores| ~ 1 here
    wrong = spsolve(sp.csc_matrix(lap), np.maximum(y, 0))[:3]  # rescale-then-clip order
    assert not np.allclose(got, wrong, atol=1e-4)


def ref_graph_clip_first(x, t):
    """The wrong order (clip then rescale) for the graph, to show the test discriminates."""
    nn, _, nt, _, _ = ref_lists(x, t, 5, 1.0, False)
    s_all, u_all = x.astype(np.float64) @ x.T, x.astype(np.float64) @ t.T
    s, u = np.take_along_axis(s_all, nn, 1), np.take_along_axis(u_all, nt, 1)
    lo, hi = min(s.min(), u.min()), max(s.max(), u.max())
    s, u = (np.maximum(s, 0) - lo) / (hi - lo), ((np.maximum(u, 0) - lo) / (hi - lo)) ** 3
    w = np.zeros((43, 43))
    for i in range(40):
        w[3 + i, 3 + nn[i]], w[3 + i, nt[i]] = s[i], u[i]
    w = w + w.T
    np.fill_diagonal(w, 0)
    return w


# ----------------------------------------------------------------------------- accuracy


def test_zlap_beats_zero_shot_with_modality_gap():
    x, t, y, q, yq = make_data(0, n=600, c=10, d=64, s_img=1.2, s_txt=2.0, gap=3.0, n_query=300)
    zero_shot = ((x @ t.T).argmax(1) == y).mean()
    trans = (zlap_transductive(x, t).argmax(1) == y).mean()
    assert trans >= zero_shot + 0.05, (zero_shot, trans)
    model = ZLaPInductive().fit(x, t)
    zs_q = ((q @ t.T).argmax(1) == yq).mean()
    for sparse in (False, True):
        acc = (model.scores(q, sparse=sparse).argmax(1) == yq).mean()
        assert acc >= zs_q + 0.05, (sparse, zs_q, acc)


# ----------------------------------------------------------------------------- errors, warnings


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda x, t: (x.astype(np.float64), t), "float32"),
        (lambda x, t: (x[0], t), "2-D"),
        (
            lambda x, t: (np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x).astype(np.float32), t),
            "NaN",
        ),
        (lambda x, t: (x * 2, t), "normalised"),
        (lambda x, t: (x, unit(np.ones((2, 3)))), "dimension"),
        (lambda x, t: (x.tolist(), t), "numpy"),
    ],
)
def test_invalid_features_raise(mutate, match):
    x, t, *_ = make_data(13, n=10)
    xx, tt = mutate(x, t)
    with pytest.raises(ZLaPError, match=match):
        zlap_transductive(xx, tt)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"k": 0}, "k must"),
        ({"alpha": 1.0}, "alpha"),
        ({"gamma": -1.0}, "gamma"),
        ({"solver": "lu"}, "solver"),
        ({"tol": 0.0}, "tol"),
        ({"maxiter": 0}, "maxiter"),
        ({"knn": (np.zeros((10, 4)), np.zeros((10, 4), dtype=np.int64))}, "shape"),
        ({"knn": (np.zeros((10, 5)), np.full((10, 5), 99))}, "outside"),
    ],
)
def test_invalid_parameters_raise(kwargs, match):
    x, t, *_ = make_data(14, n=10)
    with pytest.raises(ZLaPError, match=match) as err:
        zlap_transductive(x, t, **kwargs)
    assert isinstance(err.value, ValueError)


def test_inductive_usage_errors():
    x, t, _, q, _ = make_data(15, n=20, n_query=2)
    with pytest.raises(ZLaPError, match="not fitted"):
        ZLaPInductive().scores(q)
    with pytest.raises(ZLaPError, match="alpha"):
        ZLaPInductive(alpha=2.0)
    model = ZLaPInductive(precompute_sparse=False).fit(x, t)
    with pytest.raises(ZLaPError, match="sparse table"):
        model.scores(q, sparse=True)
    with pytest.raises(ZLaPError, match="dimension"):
        model.scores(unit(np.ones((2, 5))))
    with pytest.raises(ZLaPError, match="square"):
        propagate_labels(sp.csr_matrix(np.ones((3, 4))), 2)


@pytest.mark.parametrize("solver", ["cg", "series"])
def test_convergence_warning_and_info(solver):
    x, t, *_ = make_data(16)
    with pytest.warns(ZLaPConvergenceWarning, match="residual"):
        _, info = zlap_transductive(x, t, alpha=0.999, maxiter=2, solver=solver, return_info=True)
    assert not info.converged and info.residual > 1e-6 and info.iterations == 2
    with pytest.warns(ZLaPConvergenceWarning):
        model = ZLaPInductive(alpha=0.999, maxiter=2, solver=solver).fit(x, t)
    assert model.info_["fit"].converged is False
    assert model.info_["fit"].as_dict()["n_unconverged"] > 0


def test_no_warning_when_converged(recwarn):
    x, t, *_ = make_data(17)
    zlap_transductive(x, t, alpha=0.9)
    assert not [w for w in recwarn if issubclass(w.category, ZLaPConvergenceWarning)]


# ----------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("method", ["zscore", "rank"])
def test_calibrate_scores_monotone_in_unit_interval(method):
    x, t, *_ = make_data(18)
    f = zlap_transductive(x, t)
    conf = calibrate_scores(f, method=method)
    assert conf.shape == f.shape and (conf >= 0).all() and (conf <= 1).all()
    for c in range(f.shape[1]):
        order = np.argsort(f[:, c])
        assert (np.diff(conf[order, c]) >= 0).all()
    assert np.allclose(calibrate_scores(np.ones((5, 2)), method=method), 0.5)
    with pytest.raises(ZLaPError):
        calibrate_scores(np.array([[np.nan]]), method=method)


@pytest.mark.parametrize("solver", ["cg", "series"])
def test_threaded_block_solves_equal_serial_ones(solver):
    x, t, _, q, _ = make_data(21, n=80, c=7, n_query=9)
    lap = build_graph(x, t)
    serial, info = propagate_labels(lap, len(t), solver=solver, chunk=2, return_info=True)
    threaded, info3 = propagate_labels(lap, len(t), solver=solver, chunk=2, workers=3, return_info=True)
    np.testing.assert_array_equal(threaded, serial)  # each block solved exactly as alone
    assert (info3.iterations, info3.residual, info3.n_unconverged) == (info.iterations, info.residual, 0)
    one = ZLaPInductive(solver=solver, chunk=2).fit(x, t)
    many = ZLaPInductive(solver=solver, chunk=2, workers=4).fit(x, t)
    np.testing.assert_array_equal(many.pseudo_labels_, one.pseudo_labels_)  # ties: earlier class, in order
    np.testing.assert_array_equal(many.pseudo_scores_, one.pseudo_scores_)
    np.testing.assert_array_equal(many.scores(q), one.scores(q))
    with pytest.warns(ZLaPConvergenceWarning):
        propagate_labels(build_graph(x, t, alpha=0.97), len(t), solver=solver, maxiter=2, chunk=2, workers=2)


def test_fit_predict_gives_transductive_scores_and_table_in_one_pass():
    x, t, *_ = make_data(22, n=70, c=5)
    model = ZLaPInductive(chunk=2, workers=2)
    scores = model.fit_predict(x, t)
    np.testing.assert_array_equal(scores, zlap_transductive(x, t, chunk=2))
    reference = ZLaPInductive(chunk=2).fit(x, t)
    np.testing.assert_array_equal(model.pseudo_labels_, reference.pseudo_labels_)
    np.testing.assert_array_equal(model.pseudo_scores_, reference.pseudo_scores_)
    assert model.info_["fit"].n_rhs == len(t)
    low = ZLaPInductive(chunk=2, precompute_sparse=False).fit_predict(x, t, dtype=np.float32)
    assert low.dtype == np.float32 and hasattr(model, "pseudo_labels_")
    np.testing.assert_allclose(low, scores, rtol=1e-6, atol=0)
    with pytest.raises(ZLaPError, match="workers"):
        propagate_labels(build_graph(x, t), len(t), workers=0)


def test_large_graphs_are_solved_in_locality_order(monkeypatch):
    import query.zlap_solve as zlap

    x, t, _, q, _ = make_data(23, n=90, c=6, n_query=4)
    lap = build_graph(x, t)
    plain = propagate_labels(lap, len(t), chunk=4)
    one = ZLaPInductive(chunk=4).fit(x, t)
    monkeypatch.setattr(zlap, "REORDER_ABOVE", 10)
    perm = zlap.locality_order(lap, len(t))
    assert perm is not None and sorted(perm.order.tolist()) == list(range(lap.shape[0]))
    np.testing.assert_array_equal(perm.order[: len(t)], np.arange(len(t)))  # text nodes keep their numbers
    np.testing.assert_array_equal(perm.lap.toarray(), lap.toarray()[np.ix_(perm.order, perm.order)])
    strongest = np.asarray((-lap[len(t) :, : len(t)]).argmax(axis=1)).ravel()
    assert np.all(np.diff(strongest[perm.order[len(t) :] - len(t)]) >= 0)  # grouped by strongest text node
    np.testing.assert_allclose(propagate_labels(lap, len(t), chunk=4, workers=2), plain, rtol=0, atol=1e-14)
    many = ZLaPInductive(chunk=4, workers=2).fit(x, t)
    np.testing.assert_array_equal(many.pseudo_labels_, one.pseudo_labels_)
    np.testing.assert_allclose(many.pseudo_scores_, one.pseudo_scores_, rtol=0, atol=1e-14)
    np.testing.assert_allclose(many.scores(q), one.scores(q), rtol=0, atol=1e-14)
    many.drop_graph()
    np.testing.assert_allclose(many.scores(q, sparse=True), one.scores(q, sparse=True), rtol=0, atol=1e-14)
    with pytest.raises(ZLaPError, match="needs the graph"):
        many.scores(q)
