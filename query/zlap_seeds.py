"""People's corrections as ZLaP seed nodes, with a seed weight that ZLaP chooses for itself.

Label c's right-hand side becomes ``e_c + w * (sum of e_i over images i confirmed for c - sum
over images rejected for c)``; with w = 0 (or no corrections) the solve is exactly the
reference's ``L f = e_c``.

**How w is chosen.** How much a labelled image should count next to the text node differs a lot
between models: on features with a modality gap, seeds lift top-1 from 0.24 to 0.8; on the
shapes model they lower it. So w is checked on the corrections themselves, leave-self-out, on
ZLaP's own scores (it used to follow the prototype's check, :mod:`query.fewshot`, which on the
shapes model cost ZLaP 2 to 5 points). The checks are up to ``MAX_CHECKS`` corrected pairs
(seeded draw): confirmed ones of labels with at least two confirmed images, and rejected ones
of labels with other corrections. ZLaP is linear in its right-hand side and L is symmetric, so
one block solve with a column ``e_i`` per checked image i gives row i of ``L^-1``, and with it
the exact score of every label at every w, with the image's own seeds left out:
``(L^-1)_ic + w * sum_j s_j (L^-1)_ij`` over the other seeds j of c (s_j = +1 confirmed, -1
rejected). w is the value of ``GRID`` under which the most checks come out right (a confirmed
label on top, a rejected one not), kept only when it beats w = 0 clearly
(:func:`query.learning.choose_by_checks`: corrections from ``review`` are the hard images, a
biased sample). Below ``MIN_CHECKS`` checks the
weight is ``DEFAULT``. The check costs ``min(checks, MAX_CHECKS)`` more solved columns, on top of
one per label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from query.learning import Corrections, choose_by_checks
from query.scoring import TextSet
from query.text import max_per_label
from query.vocab import Label, apply_structure

GRID = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
DEFAULT = 0.1  # w when the corrections cannot choose
MIN_CHECKS = 10
MAX_CHECKS = 64
SEED = 0

Seeds = tuple[np.ndarray, np.ndarray, np.ndarray]


def propagated_scores(raw: np.ndarray, text: TextSet, labels: Sequence[Label]) -> np.ndarray:
    """Propagated (N, C+M) scores of labels then negatives -> (N, C) label scores after structure."""
    n_labels = len(labels)
    negative = max_per_label(raw[:, n_labels:], text[2], n_labels) if raw.shape[1] > n_labels else None
    return apply_structure(raw[:, :n_labels], labels, negative)


def seeds_for(model: Any, fixes: Corrections, text: TextSet, labels: Sequence[Label]) -> Seeds | None:
    """Seed nodes ``(rows, cols, weights)`` of ``fixes`` (rows: positions into the corpus) for the
    built :class:`query.zlap.ZLaPInductive` ``model``: +w confirmed, -w rejected, w from
    :func:`choose_weight`; None without corrections or when w is 0."""
    if not len(fixes):
        return None
    weight = choose_weight(model, fixes, text, labels)
    if weight <= 0:
        return None
    return fixes.rows, fixes.cols, np.where(fixes.verdict, weight, -weight)


def checks_of(fixes: Corrections) -> np.ndarray:
    """Positions of the corrected pairs that can check a weight (module docstring), at most
    ``MAX_CHECKS`` of them (a seeded draw)."""
    confirmed = np.bincount(fixes.cols[fixes.verdict], minlength=int(fixes.cols.max(initial=0)) + 1)
    per_label = np.bincount(fixes.cols, minlength=len(confirmed))
    usable = np.where(fixes.verdict, confirmed[fixes.cols] >= 2, per_label[fixes.cols] >= 2)
    found = np.flatnonzero(usable)
    if len(found) > MAX_CHECKS:
        found = np.sort(np.random.default_rng(SEED).choice(found, MAX_CHECKS, replace=False))
    return found


def choose_weight(model: Any, fixes: Corrections, text: TextSet, labels: Sequence[Label]) -> float:
    """w of ``GRID`` under which the most checks come out right, leave-self-out (module docstring)."""
    checks = checks_of(fixes)
    if len(checks) < MIN_CHECKS:
        return DEFAULT
    base, pull = check_scores(model, fixes, checks)
    want, cols = fixes.verdict[checks], fixes.cols[checks]
    right = [(propagated_scores(base + w * pull, text, labels).argmax(axis=1) == cols) == want for w in GRID]
    return choose_by_checks(GRID, right)


def check_scores(model: Any, fixes: Corrections, checks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, C+M) propagated scores of the checked images ``checks`` (positions into ``fixes``) at
    w = 0, and what w = 1 adds to them from every seed but their own: the score at w is
    ``base + w * pull``. One block solve of K columns on ``model``'s built graph."""
    n_cls = model.graph_.n_classes
    nodes = n_cls + fixes.rows[checks]
    keep = np.concatenate([np.arange(n_cls), n_cls + fixes.rows])  # the rows of L^-1 needed
    inverse = np.empty((len(keep), len(checks)))

    def make(c0: int, c1: int) -> np.ndarray:
        b = np.zeros((model.graph_.L.shape[0], c1 - c0))
        b[nodes[c0:c1], np.arange(c1 - c0)] = 1.0
        return b

    def consume(c0: int, c1: int, x: np.ndarray) -> None:
        inverse[:, c0:c1] = x[keep]

    model.solve(len(checks), make, consume)
    each = inverse[n_cls:].T * np.where(fixes.verdict, 1.0, -1.0)  # (K, n): s_j (L^-1)_ij
    each[fixes.rows[None, :] == fixes.rows[checks][:, None]] = 0.0  # every seed of the image itself
    onehot = np.zeros((len(fixes), n_cls))
    onehot[np.arange(len(fixes)), fixes.cols] = 1.0
    return inverse[:n_cls].T, each @ onehot
