"""Per-label confidences from a corpus' own scores, without ground truth.

Raw scores are not comparable across labels: CLIP cosines differ in level per label, and ZLaP
scores are tiny L^-1 entries whose scale depends on each label node's degree. vistag turns
them into confidences with one documented rule, the same for every method:

**Pseudo-label Platt scaling.** Each image's top-scoring label is taken as its pseudo-label.
For each label c, a one-feature logistic regression is fitted on the corpus,

    confidence[i, c] = sigmoid(a_c * f(s[i, c]) + b_c),

predicting "c is image i's top label" from the image's own score for c, where f standardises
the score within the label (and takes the log first for ZLaP, whose scores are positive and
span orders of magnitude). Targets are Platt's smoothed 0/1 values, so a label that is never
anyone's top label gets confidences near 1/(N+2), and a label that is everyone's top label
near 1. A confidence of 0.5 thus marks the score at which a label starts to win images in this
corpus; an image with two strong labels gets two high confidences (multi-label), and a cut such
as ``--min-confidence 0.5`` means the same for every label. Fitted on at most ``max_rows``
sampled rows; applying the fitted (a, b) to new images needs no refit.

**Bounded memory.** The fit needs every label's scores over the same rows (the pseudo-label is
a row's argmax), so large corpora are fitted on a bounded sample: :func:`sample_rows` picks at
most ``MAX_ROWS`` rows (uniformly, seed 0), and a caller scoring a corpus in chunks scores just
those rows for the fit (:func:`query.tagging.score_corpus`), then applies the fit chunk by
chunk. The logistic fits are independent per label and run on blocks of labels (up to
``FIT_THREADS`` blocks at once in threads; the result does not depend on it), so the fit holds
the (rows, C) sample plus about a dozen temporaries of ``BLOCK_ELEMENTS`` per block in flight.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

MAX_ROWS = 100_000
BLOCK_ELEMENTS = 2_000_000  # per temporary array of the fit (16 MB of float64)
FIT_THREADS = 8  # label blocks fitted at once (numpy releases the GIL): about 0.2 GB each
EPS = 1e-12


@dataclass(frozen=True)
class Calibration:
    """Fitted per-label parameters: ``mean``, ``std`` (feature standardisation), ``a``, ``b``; (C,) each;
    ``top_a``, ``top_b``: a global Platt on top of the per-label logits (identity unless fitted on
    people's corrections, :func:`query.learning.calibrate_on`)."""

    log: bool
    mean: np.ndarray
    std: np.ndarray
    a: np.ndarray
    b: np.ndarray
    top_a: float = 1.0
    top_b: float = 0.0

    def _base(self, scores: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(scores, EPS)) if self.log else np.asarray(scores, dtype=np.float64)

    def feature(self, scores: np.ndarray) -> np.ndarray:
        return (self._base(scores) - self.mean) / self.std

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """(N, C) scores -> (N, C) float64 confidences in (0, 1)."""
        return self._top(self.a * self.feature(scores) + self.b)

    def logit_at(self, scores: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Per-label logits (before the global Platt) of ``scores`` (m, n) of labels ``cols`` (m, n)."""
        return self.a[cols] * ((self._base(scores) - self.mean[cols]) / self.std[cols]) + self.b[cols]

    def apply_at(self, scores: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Confidences of picked entries: ``scores`` (m, n) of labels ``cols`` (m, n); equal to
        ``apply`` of the full rows taken at ``cols``, at the cost of the picked entries only."""
        return self._top(self.logit_at(scores, cols))

    def _top(self, z: np.ndarray) -> np.ndarray:
        if self.top_a == 1.0 and self.top_b == 0.0:
            return _sigmoid(z)
        return _sigmoid(self.top_a * z + self.top_b)

    def to_arrays(self) -> dict[str, np.ndarray]:
        top = {"top": np.array([self.top_a, self.top_b])}
        return {"log": np.array(self.log), "mean": self.mean, "std": self.std, "a": self.a, "b": self.b} | top

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Calibration:
        top = arrays.get("top", np.array([1.0, 0.0]))
        return cls(
            bool(arrays["log"]), arrays["mean"], arrays["std"], arrays["a"], arrays["b"], *map(float, top)
        )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def sample_rows(n: int, max_rows: int = MAX_ROWS, seed: int = 0) -> np.ndarray | slice:
    """Rows of an (n, C) score matrix that :func:`fit_calibration` fits on: all of them
    (``slice(None)``) up to ``max_rows``, else ``max_rows`` distinct rows drawn with ``seed``."""
    if n <= max_rows:
        return slice(None)
    return np.random.default_rng(seed).choice(n, max_rows, replace=False)


def fit_calibration(
    scores: np.ndarray, *, log: bool = False, max_rows: int = MAX_ROWS, seed: int = 0
) -> Calibration:
    """Fit the rule above on (N, C) ``scores``; ``log=True`` for positive, heavy-tailed scores.

    Rows beyond ``max_rows`` are sampled with :func:`sample_rows`; passing just the sampled rows
    (``scores[sample_rows(N)]``) gives the same fit.
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (N, C) array, got shape {s.shape}")
    s = np.asarray(s[sample_rows(s.shape[0], max_rows, seed)], dtype=np.float64)
    top = s.argmax(axis=1)
    n, c = s.shape
    width = c if n * c <= BLOCK_ELEMENTS else max(1, BLOCK_ELEMENTS // n)

    def fit_block(c0: int) -> tuple[np.ndarray, ...]:
        block = s[:, c0 : c0 + width] if width < c else s
        feat = np.log(np.maximum(block, EPS)) if log else block
        mean, std = feat.mean(axis=0), feat.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        x = (feat - mean) / std
        y = (top[:, None] == np.arange(c0, c0 + block.shape[1])[None, :]).astype(np.float64)
        return (mean, std, *_platt(x, y))

    starts = range(0, c, width)  # labels are fitted independently: bounded temporaries, threads
    workers = min(len(starts), os.cpu_count() or 1, FIT_THREADS)
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="calibration") as pool:
            parts = list(pool.map(fit_block, starts))
    else:
        parts = [fit_block(c0) for c0 in starts]
    mean, std, a, b = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Calibration(log, mean, std, a, b)


def fit_global(z: np.ndarray, verdict: np.ndarray, prior: float = 1.0) -> tuple[float, float]:
    """One logistic regression ``sigmoid(A z + B)`` of (n,) bool ``verdict`` on (n,) logits ``z``:
    Platt's smoothed targets, a Gaussian prior of weight ``prior`` pulling (A, B) towards the
    identity (1, 0) (few or separable pairs cannot run off), Newton steps halved until the loss
    falls; returns (A, B)."""
    z, y = np.asarray(z, np.float64), np.asarray(verdict, bool)
    n_pos, n = int(y.sum()), len(y)
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1.0 / (n - n_pos + 2))
    x = np.stack([z, np.ones(n)], axis=1)
    centre = np.array([1.0, 0.0])

    def loss(p: np.ndarray) -> float:
        u = x @ p
        return float(np.sum(np.logaddexp(0, u) - t * u) + 0.5 * prior * np.sum((p - centre) ** 2))

    p = centre.copy()
    for _ in range(50):
        q = _sigmoid(x @ p)
        grad = x.T @ (q - t) + prior * (p - centre)
        hess = (x * (q * (1 - q))[:, None]).T @ x + prior * np.eye(2)
        step, before = np.linalg.solve(hess, grad), loss(p)
        while loss(p - step) > before and np.abs(step).max() > 1e-12:
            step = step / 2
        p = p - step
        if np.abs(step).max() < 1e-9:
            break
    return float(p[0]), float(p[1])


def _platt(x: np.ndarray, y: np.ndarray, iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Per-column logistic regression of y on x (both (N, C)) by Newton steps; returns a, b (C,)."""
    n_pos = y.sum(axis=0)
    n = y.shape[0]
    t = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1.0 / (n - n_pos + 2))  # Platt's smoothed targets
    a = np.ones(y.shape[1])
    b = np.log((n_pos + 1) / (n - n_pos + 1))
    p, w, tmp = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    for _ in range(iterations):  # the same float operations as written out, in reused buffers
        np.multiply(x, a, out=p)  # p = sigmoid(a x + b) = 0.5 (1 + tanh(0.5 (a x + b)))
        p += b
        p *= 0.5
        np.tanh(p, out=p)
        p += 1.0
        p *= 0.5
        np.subtract(1, p, out=w)  # w = max(p (1 - p), 1e-12)
        w *= p
        np.maximum(w, 1e-12, out=w)
        r = np.subtract(p, t, out=p)  # r = p - t
        g_a, g_b = np.multiply(r, x, out=tmp).sum(0), r.sum(0)
        np.multiply(w, x, out=tmp)  # w x, then w x x
        h_ab = tmp.sum(0)
        h_aa, h_bb = (tmp.__imul__(x)).sum(0) + 1e-6, w.sum(0) + 1e-6
        det = h_aa * h_bb - h_ab**2
        step_a = (h_bb * g_a - h_ab * g_b) / det
        step_b = (h_aa * g_b - h_ab * g_a) / det
        a, b = a - step_a, b - step_b
        if max(np.abs(step_a).max(), np.abs(step_b).max()) < 1e-8:
            break
    return a, b
