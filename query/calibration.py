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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ROWS = 100_000
EPS = 1e-12


@dataclass(frozen=True)
class Calibration:
    """Fitted per-label parameters: ``mean``, ``std`` (feature standardisation), ``a``, ``b``; (C,) each."""

    log: bool
    mean: np.ndarray
    std: np.ndarray
    a: np.ndarray
    b: np.ndarray

    def feature(self, scores: np.ndarray) -> np.ndarray:
        s = np.log(np.maximum(scores, EPS)) if self.log else np.asarray(scores, dtype=np.float64)
        return (s - self.mean) / self.std

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """(N, C) scores -> (N, C) float64 confidences in (0, 1)."""
        return _sigmoid(self.a * self.feature(scores) + self.b)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"log": np.array(self.log), "mean": self.mean, "std": self.std, "a": self.a, "b": self.b}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Calibration:
        return cls(bool(arrays["log"]), arrays["mean"], arrays["std"], arrays["a"], arrays["b"])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_calibration(scores: np.ndarray, *, log: bool = False, max_rows: int = MAX_ROWS, seed: int = 0) -> Calibration:
    """Fit the rule above on (N, C) ``scores``; ``log=True`` for positive, heavy-tailed scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (N, C) array, got shape {s.shape}")
    if s.shape[0] > max_rows:
        s = s[np.random.default_rng(seed).choice(s.shape[0], max_rows, replace=False)]
    feat = np.log(np.maximum(s, EPS)) if log else s
    mean, std = feat.mean(axis=0), feat.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x = (feat - mean) / std
    y = (s.argmax(axis=1)[:, None] == np.arange(s.shape[1])[None, :]).astype(np.float64)
    a, b = _platt(x, y)
    return Calibration(log, mean, std, a, b)


def _platt(x: np.ndarray, y: np.ndarray, iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Per-column logistic regression of y on x (both (N, C)) by Newton steps; returns a, b (C,)."""
    n_pos = y.sum(axis=0)
    n = y.shape[0]
    t = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1.0 / (n - n_pos + 2))  # Platt's smoothed targets
    a = np.ones(y.shape[1])
    b = np.log((n_pos + 1) / (n - n_pos + 1))
    for _ in range(iterations):
        p = _sigmoid(a * x + b)
        w = np.maximum(p * (1 - p), 1e-12)
        r = p - t
        g_a, g_b = (r * x).sum(0), r.sum(0)
        h_aa, h_ab, h_bb = (w * x * x).sum(0) + 1e-6, (w * x).sum(0), w.sum(0) + 1e-6
        det = h_aa * h_bb - h_ab**2
        step_a = (h_bb * g_a - h_ab * g_b) / det
        step_b = (h_aa * g_b - h_ab * g_a) / det
        a, b = a - step_a, b - step_b
        if max(np.abs(step_a).max(), np.abs(step_b).max()) < 1e-8:
            break
    return a, b
