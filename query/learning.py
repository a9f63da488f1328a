"""People's corrections in a tag run: which (image, label) pairs are confirmed or rejected, how
they force the stored tags, and the calibration they allow.

A tag run reads the active corrections of its labels (:meth:`indexer.catalog.Catalog.correction_pairs`)
unless ``TagConfig.corrections`` is off; ``vistag eval --shots`` builds the same
:class:`Corrections` from drawn truth images, so simulated and real corrections take one path.
Each method uses them as evidence (:mod:`query.fewshot` for zeroshot and fewshot, seed nodes for
ZLaP, :mod:`query.inductive`), and every method's stored tags are forced: a confirmed pair gets
confidence 1.0 and rank 0, a rejected one confidence 0.0 and rank ``indexer.catalog_tags.REJECTED_RANK`` (after
every other rank, so no ``rank < N`` filter ever counts it as a tag); raw scores stay the method's.

**Calibration from corrections.** With at least :data:`MIN_CONFIRMED` confirmed and
:data:`MIN_REJECTED` rejected pairs, a global Platt scaling is fitted on top of the per-label
pseudo-label calibration (:mod:`query.calibration`): ``confidence = sigmoid(A z + B)`` where z is
the per-label logit, fitted to the verdicts of the corrected pairs, whose scores are computed
without their own evidence (leave-self-out) so that a pair does not vouch for itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from query.calibration import Calibration, fit_global

MIN_CONFIRMED = 10  # corrected pairs needed before confidences are fitted on them
MIN_REJECTED = 10
ECE_BINS = 10
CV_FOLDS = 5  # folds of the check that a curve fitted on the corrections beats the calibration as is


@dataclass(frozen=True)
class Corrections:
    """Corrected (image, label) pairs, three (n,) arrays: ``rows`` (catalog image ids, or
    positions into a corpus' ids after :meth:`at`), ``cols`` (label positions, int64) and
    ``verdict`` (bool, True = confirmed)."""

    rows: np.ndarray
    cols: np.ndarray
    verdict: np.ndarray

    @classmethod
    def none(cls) -> Corrections:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))

    @classmethod
    def confirmed(cls, rows: np.ndarray, cols: np.ndarray) -> Corrections:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        return cls(rows, cols, np.ones(len(rows), bool))

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self) -> dict[str, int]:
        """How many pairs are confirmed and rejected."""
        return {"confirmed": int(self.verdict.sum()), "rejected": int((~self.verdict).sum())}

    def at(self, ids: np.ndarray) -> Corrections:
        """The pairs of images among ``ids`` (sorted (N,) catalog ids), ``rows`` turned into
        positions in ``ids``; pairs of other images are dropped."""
        pos = np.searchsorted(ids, self.rows)
        pos = np.minimum(pos, max(len(ids) - 1, 0))
        keep = (ids[pos] == self.rows) if len(ids) else np.zeros(len(self.rows), bool)
        return Corrections(pos[keep].astype(np.int64), self.cols[keep], self.verdict[keep])

    def block(self, rows: slice | np.ndarray, n_rows: int, n_cols: int) -> np.ndarray | None:
        """(m, n_cols) int8 of the corpus ``rows`` (a slice or positions): +1 confirmed, -1
        rejected, 0 otherwise; None when no pair falls in the block."""
        if not len(self):
            return None
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(n_rows)
            sel = (self.rows >= start) & (self.rows < stop)
            local = self.rows[sel] - start
            m = max(stop - start, 0)
        else:
            rows = np.asarray(rows, np.int64)
            order = np.argsort(rows, kind="stable")
            at = np.minimum(np.searchsorted(rows[order], self.rows), max(len(rows) - 1, 0))
            sel = (rows[order][at] == self.rows) if len(rows) else np.zeros(len(self), bool)
            local, m = order[at[sel]], len(rows)
        if not sel.any():
            return None
        out = np.zeros((m, n_cols), np.int8)
        out[local, self.cols[sel]] = np.where(self.verdict[sel], 1, -1)
        return out


def read_corrections(catalog, names: tuple[str, ...]) -> Corrections:  # noqa: ANN001
    """The catalog's active corrections of labels ``names`` (rows are image ids)."""
    ids, cols, verdict = catalog.correction_pairs(list(names))
    return Corrections(ids, cols, verdict)


def force(confidence: np.ndarray, forced: np.ndarray | None) -> np.ndarray:
    """``confidence`` with confirmed entries of ``forced`` (same shape, int8) at 1.0, rejected at 0.0."""
    if forced is None:
        return confidence
    return np.where(forced > 0, 1.0, np.where(forced < 0, 0.0, confidence))


def rank_key(scores: np.ndarray, forced: np.ndarray | None) -> np.ndarray:
    """What tags are ranked by: raw scores, confirmed pairs first, rejected ones last."""
    if forced is None:
        return scores
    return np.where(forced > 0, np.inf, np.where(forced < 0, -np.inf, scores))


def calibrate_on(calibration: Calibration, scores: np.ndarray, fixes: Corrections) -> Calibration:
    """``calibration`` with a global Platt on top fitted on the corrected pairs' leave-self-out
    ``scores`` (n,), when there are enough of both verdicts and the curve predicts the verdicts
    better than ``calibration`` alone (:func:`beats_as_is`); else ``calibration`` unchanged."""
    counts = fixes.counts()
    if counts["confirmed"] < MIN_CONFIRMED or counts["rejected"] < MIN_REJECTED:
        return calibration
    z = calibration.logit_at(scores[:, None], fixes.cols[:, None])[:, 0]
    if not beats_as_is(z, fixes.verdict):
        return calibration
    top_a, top_b = fit_global(z, fixes.verdict)
    return replace(calibration, top_a=top_a, top_b=top_b)


def beats_as_is(z: np.ndarray, verdict: np.ndarray, folds: int = CV_FOLDS) -> bool:
    """Whether a Platt curve fitted on the corrected pairs predicts their verdicts from the logits
    ``z`` (n,) better than ``sigmoid(z)`` as it is: a lower Brier score (mean squared error of the
    confidence, a proper score that a few extreme mistakes cannot dominate as they do the
    log-loss) on held-out pairs, ``folds``-fold (seeded). The pseudo-label calibration can
    already be right where corrections cannot improve it: ZLaP's seeded scores on the synthetic
    features, where a curve fitted on 300 reviewed pairs (most with low scores, rejected) raised
    the error of the other images' top-1 confidences from 0.054 to 0.089 (``docs/benchmarks.md``)."""
    z, y = np.asarray(z, np.float64), np.asarray(verdict, bool)
    order = np.random.default_rng(0).permutation(len(z))
    held = np.empty(len(z))
    for part in np.array_split(order, folds):
        rest = np.setdiff1d(order, part)
        a, b = fit_global(z[rest], y[rest])
        held[part] = a * z[part] + b
    return _brier(held, y) < _brier(z, y)


def _brier(logit: np.ndarray, y: np.ndarray) -> float:
    """Mean squared difference between ``sigmoid(logit)`` and bool ``y``."""
    return float(np.mean((0.5 * (1.0 + np.tanh(0.5 * logit)) - y) ** 2))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of (n,) confidences against (n,) bool outcomes: the mean over ``bins`` equal-width
    bins of |accuracy - mean confidence|, weighted by the bin's share of the pairs."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    if not len(confidence):
        return float("nan")
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(confidence))


def choose_by_checks(grid: Sequence[float], right: Sequence[np.ndarray]) -> float:
    """The value of ``grid`` (``grid[0]`` = 0: no image evidence) under which the most checks come
    out right (``right[k]``: (n,) bool per check under ``grid[k]``; the smallest of the best),
    kept only when it beats 0 by a sign test at two standard deviations over the checks that
    change (b right only with it, c only without: ``b - c >= 2 sqrt(b + c)``); else 0.

    People's corrections are not a random sample: ``review`` asks about the images the tagger is
    least sure of, and on those (hard, alike) images evidence from the others can look better
    than it is for the archive. On the shapes model, a weight chosen by the best count alone, 113
    against 109 of 153 reviewed checks, cut ZLaP's top-1 on the other images from 0.84 to 0.69."""
    hits = [int(np.sum(r)) for r in right]
    best = int(np.argmax(hits))
    b = int(np.sum(right[best] & ~right[0]))
    c = int(np.sum(right[0] & ~right[best]))
    return float(grid[best]) if best and b - c >= 2.0 * np.sqrt(b + c) else float(grid[0])
