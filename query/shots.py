"""Simulated corrections: how tagging improves when people confirm a few images per label
(``vistag eval --truth CSV --shots 0,1,2,4,8``).

For each shots value N, N truth images of each label are drawn as confirmed for that label
(seeded; the draws are nested: the 2-shot draw holds the 1-shot draw) and handed to the scoring as
:class:`query.learning.Corrections`, exactly as people's corrections would be. Every row is
measured on the same test images: the truth images never drawn at the largest N. Per shots value
and method: top-1 accuracy and the expected calibration error (ECE, 10 bins) of each test image's
top-1 label (its confidence against whether it is one of the image's true labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from core.errors import InputError
from query.learning import Corrections, expected_calibration_error
from query.scoring import CorpusScores

SEED = 0


def parse_shots(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"0,1,2,4,8"`` -> (0, 1, 2, 4, 8); a single N means (0, N); sorted, distinct, >= 0."""
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError as err:
        raise InputError(f"--shots takes whole numbers separated by commas, not {text!r}") from err
    if not values or min(values) < 0:
        raise InputError(f"--shots takes whole numbers of at least 0, not {text!r}")
    if len(values) == 1:
        values = [0, *values]
    return tuple(sorted(set(values)))


def draw(
    labels: Sequence[set[str]], names: Sequence[str], shots: int, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Positions into ``labels`` (the truth images' label sets) and label columns of ``shots``
    drawn images per label: a prefix of one seeded order per label, so draws are nested."""
    rows, cols = [], []
    for c, name in enumerate(names):
        having = np.array([i for i, found in enumerate(labels) if name in found], np.int64)
        order = np.random.default_rng([seed, c]).permutation(having)
        rows.extend(order[:shots].tolist())
        cols.extend([c] * min(shots, len(order)))
    return np.asarray(rows, np.int64), np.asarray(cols, np.int64)


def held_out_rows(
    labels: Sequence[set[str]], names: Sequence[str], shots: Sequence[int], seed: int = SEED
) -> np.ndarray:
    """Positions of the truth images never drawn at the largest shots value."""
    drawn = set(draw(labels, names, max(shots), seed)[0].tolist())
    return np.array([i for i in range(len(labels)) if i not in drawn], np.int64)


def top1_metrics(
    scored_scores: np.ndarray, confidence: np.ndarray, labels: Sequence[set[str]], names: Sequence[str]
) -> dict[str, float]:
    """Top-1 accuracy and its ECE for (T, C) scores and confidences of images with ``labels``."""
    best = scored_scores.argmax(axis=1)
    correct = np.array([names[c] in found for c, found in zip(best.tolist(), labels, strict=True)])
    conf = confidence[np.arange(len(best)), best]
    return {
        "top1": float(correct.mean()) if len(correct) else float("nan"),
        "ece": expected_calibration_error(conf, correct),
    }


def evaluate_shots(
    score: Any,
    truth_ids: np.ndarray,
    labels: Sequence[set[str]],
    names: Sequence[str],
    config: Any,
    methods: Sequence[str],
    shots: Sequence[int],
) -> dict[str, Any]:
    """``{"shots": {"N": {method: {"top1", "ece"}}}, "test_images": T}``; ``score(config,
    corrections) -> CorpusScores`` scores the corpus (e.g. :func:`query.tagging.score_corpus`)."""
    test = held_out_rows(labels, names, shots)
    if not len(test):
        raise InputError(f"--shots {max(shots)} draws every truth image: no test images are left")
    test_labels = [labels[i] for i in test]
    out: dict[str, Any] = {}
    for n in shots:
        rows, cols = draw(labels, names, n)
        fixes = Corrections.confirmed(truth_ids[rows], cols)
        out[str(n)] = {}
        for method in methods:
            corpus: CorpusScores = score(replace(config, method=method), fixes)
            position = np.searchsorted(corpus.ids, truth_ids[test])
            scored = corpus.rows(position)
            out[str(n)][method] = top1_metrics(scored.scores, scored.confidence, test_labels, names) | {
                "confirmed": len(rows)
            }
    return {"shots": out, "test_images": len(test)}
