"""Which images a person should look at next: per label, the images whose calibrated confidence
for it is nearest 0.5 (the tagger is least sure) among those that have it among their ``TOP`` best
labels, leaving out (content, label) pairs already corrected, taken in turn from each label so the
list spreads over the labels, each image once.

:func:`select` is the choice on arrays of scores (pure); :func:`review` scores the archive and
calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InputError
from indexer.catalog import Catalog
from indexer.home import Home
from query.scoring import Scored, TagConfig, best_labels
from query.search import Searcher

TOP = 3  # a label is a candidate for the images that have it among their TOP best labels


@dataclass(frozen=True)
class Candidates:
    """Entries (image, label): ``ids`` (m,) int64, ``cols`` (m,) int64 label positions,
    ``confidence`` (m,) float64 calibrated, ``ranks`` (m,) int64 (0 = the image's best label)."""

    ids: np.ndarray
    cols: np.ndarray
    confidence: np.ndarray
    ranks: np.ndarray

    @classmethod
    def empty(cls) -> Candidates:
        return cls(*(np.zeros(0, np.int64) for _ in range(2)), np.zeros(0), np.zeros(0, np.int64))

    def take(self, keep: np.ndarray) -> Candidates:
        return Candidates(self.ids[keep], self.cols[keep], self.confidence[keep], self.ranks[keep])

    def join(self, other: Candidates) -> Candidates:
        return Candidates(
            *(np.concatenate([a, b]) for a, b in zip(self.arrays(), other.arrays(), strict=True))
        )

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.ids, self.cols, self.confidence, self.ranks


def top_entries(scored: Scored, top: int = TOP) -> Candidates:
    """Each image's ``top`` best labels by raw score (as a tag run ranks them), with confidences."""
    n = min(top, scored.scores.shape[1])
    cols = best_labels(scored.scores, n)
    confidence = scored.confidence_at(cols)
    ranks = np.broadcast_to(np.arange(n, dtype=np.int64), cols.shape)
    ids = np.repeat(np.asarray(scored.ids, np.int64), n)
    return Candidates(
        ids, cols.ravel().astype(np.int64), confidence.ravel().astype(np.float64), ranks.ravel()
    )


def most_uncertain(found: Candidates, corrected: tuple[np.ndarray, np.ndarray], per_label: int) -> Candidates:
    """Per label, the ``per_label`` entries of confidence nearest 0.5 (ties: lower image id) that
    are not among ``corrected`` (image ids, label positions: two (k,) arrays); sorted by label,
    then nearness to 0.5, then image id."""
    width = int(max(found.cols.max(initial=0), corrected[1].max(initial=0))) + 1
    done = np.asarray(corrected[0], np.int64) * width + np.asarray(corrected[1], np.int64)
    found = found.take(~np.isin(found.ids * width + found.cols, done))
    order = np.lexsort((found.ids, np.abs(found.confidence - 0.5), found.cols))
    found = found.take(order)
    starts = np.r_[0, np.flatnonzero(np.diff(found.cols)) + 1] if len(found.cols) else np.zeros(0, int)
    position = np.arange(len(found.cols)) - np.repeat(starts, np.diff(np.r_[starts, len(found.cols)]))
    return found.take(position < per_label)


def select(found: Candidates, corrected: tuple[np.ndarray, np.ndarray], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` entries to review: the labels take turns, each giving its next most uncertain
    entry (see :func:`most_uncertain`) whose image is not in the list yet; in each round the label
    whose next entry is nearest 0.5 goes first (then label order), so a short list holds the most
    uncertain labels rather than the first ones. Each ``{"id", "col", "confidence", "rank"}``."""
    if n < 1:
        raise InputError("-n must be at least 1")
    queues: dict[int, list[int]] = {}
    ranked = most_uncertain(found, corrected, 2 * n)  # n images taken can push a label back n places
    for position, col in enumerate(ranked.cols.tolist()):
        queues.setdefault(col, []).append(position)
    picked: list[dict[str, Any]] = []
    taken: set[int] = set()
    heads = dict.fromkeys(queues, 0)

    def head(col: int) -> int | None:
        """The label's next row whose image is not taken (advancing past taken ones), or None."""
        queue = queues[col]
        while heads[col] < len(queue) and int(ranked.ids[queue[heads[col]]]) in taken:
            heads[col] += 1
        return queue[heads[col]] if heads[col] < len(queue) else None

    while len(picked) < n:
        ready = {col: row for col in queues if (row := head(col)) is not None}
        if not ready:
            break
        for col in sorted(ready, key=lambda c: (abs(float(ranked.confidence[ready[c]]) - 0.5), c)):
            row = head(col)
            if row is None:
                continue
            heads[col] += 1
            taken.add(int(ranked.ids[row]))
            picked.append(
                {
                    "id": int(ranked.ids[row]),
                    "col": col,
                    "confidence": float(ranked.confidence[row]),
                    "rank": int(ranked.ranks[row]),
                }
            )
            if len(picked) == n:
                break
    return picked


def review(
    home: Home, catalog: Catalog, searcher: Searcher, config: TagConfig, n: int
) -> list[dict[str, Any]]:
    """Score the archive with ``config`` (zero-shot or ZLaP) and choose up to ``n`` images to review
    (:func:`select`); each ``id``, ``uri``, ``label``, ``confidence``, ``rank``."""
    from query.learning import read_corrections
    from query.tagging import score_corpus

    if n < 1:
        raise InputError("-n must be at least 1")
    names = config.names
    fixes = read_corrections(catalog, names)  # read once: the scores use them, the choice skips them
    scores = score_corpus(home, catalog, searcher, config, corrections=fixes)
    corrected = (fixes.rows, fixes.cols)
    kept = Candidates.empty()
    for block in scores.chunks(confidence=False):
        kept = most_uncertain(kept.join(top_entries(block)), corrected, 2 * n)
    picked = select(kept, corrected, n)
    uris = {row["id"]: row["uri"] for row in catalog.images([p["id"] for p in picked])}
    return [
        {
            "id": p["id"],
            "uri": uris[p["id"]],
            "label": names[p["col"]],
            "confidence": p["confidence"],
            "rank": p["rank"],
        }
        for p in picked
    ]
