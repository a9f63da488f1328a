"""The scores of a tag run, and storing them: the run's configuration, blocks of (image, label)
scores with their calibrated confidences, and the tag rows written from them.

People's corrections force what is stored (:mod:`query.learning`): a confirmed pair is ranked
first with confidence 1.0, a rejected one gets confidence 0.0 and rank ``REJECTED_RANK`` and is
never printed.

Every (image, label) pair asked for is stored under the tag run's id with its raw ``score``,
its calibrated ``confidence`` (see :mod:`query.calibration`) and its ``rank`` among the labels
(by raw score: the method's own prediction order); with ``store_top`` N, only each image's N
best labels (ranks 0..N-1). Rows go to the catalog in batches of at most ``ROW_BATCH``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InputError
from indexer.catalog import Catalog
from indexer.catalog_tags import REJECTED_RANK
from indexer.graph import GRAPH_K
from indexer.home import Home
from query.calibration import Calibration
from query.learning import Corrections, force, rank_key
from query.text import DEFAULT_TEMPLATES, max_per_label
from query.vocab import Label, apply_structure

if TYPE_CHECKING:
    from query.fewshot import Evidence

METHODS = ("zeroshot", "zlap", "fewshot")
CHUNK = 8192  # images scored, calibrated, ranked and stored together: memory O(CHUNK x C)
ROW_BATCH = 50_000  # tag rows per catalog.add_tags call
# label embeddings (C, D), negative prompt embeddings (M, D), owning label of each negative (M,)
TextSet = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TagConfig:
    """One tag run: labels, method, what to print, and ZLaP's parameters (reference defaults)."""

    labels: tuple[Label, ...]
    method: str = "zeroshot"
    top: int = 3
    min_confidence: float = 0.0
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    k: int = 5
    gamma: float = 5.0
    alpha: float = 0.3
    thresholds: dict[str, float] | None = None  # per-label confidence cuts (e.g. fitted by `eval`)
    store_top: int | None = None  # store only each image's best N labels (None: every label)
    store_all: bool = False  # store every label even past FULL_ROWS_MAX rows
    corrections: bool = True  # use people's corrections of these labels (see query.learning)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def check(self) -> TagConfig:
        if self.method not in METHODS:
            raise InputError(f"unknown tagging method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.top < 1:
            raise InputError("--top must be at least 1")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InputError("--min-confidence must be between 0 and 1")
        if self.k < 2 or self.k >= GRAPH_K:
            raise InputError(f"ZLaP k must be from 2 to {GRAPH_K - 1}")
        n = self.store_top
        if n is not None and self.store_all:
            raise InputError("--store-top and --store-all exclude each other")
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
                raise InputError(f"--store-top must be a whole number of labels, at least 1 (got {n!r})")
            object.__setattr__(self, "store_top", int(n))  # numpy integers too; stored as JSON
            if n > len(self.labels):
                raise InputError(
                    f"--store-top {n} is more than the {len(self.labels)} labels: "
                    "leave it out to store every label"
                )
        return self


@dataclass(frozen=True)
class TagResult:
    """A finished tag run: its id, labels, method, image count, and per image the shown labels."""

    run_id: int
    labels: tuple[str, ...]
    method: str
    images: int
    top: list[dict[str, Any]]


@dataclass(frozen=True)
class Scored:
    """Scores of images for labels: ``ids`` (N,), ``scores`` and ``confidence`` (N, C) float64.

    ``confidence`` may be None with a ``calibration`` instead: confidences are then computed
    only for the entries asked for (:meth:`confidence_at`). ``forced`` (N, C) int8 or None:
    people's verdicts (+1 confirmed, -1 rejected), already applied to ``confidence``.
    """

    ids: np.ndarray
    scores: np.ndarray
    confidence: np.ndarray | None
    calibration: Calibration | None = None
    forced: np.ndarray | None = None

    def confidence_at(self, cols: np.ndarray) -> np.ndarray:
        """(m, n) confidences of the entries ``(r, cols[r, j])``."""
        if self.confidence is not None:
            return np.take_along_axis(self.confidence, cols, 1)
        assert self.calibration is not None
        found = self.calibration.apply_at(np.take_along_axis(self.scores, cols, 1), cols)
        return found if self.forced is None else force(found, np.take_along_axis(self.forced, cols, 1))

    def forced_at(self, cols: np.ndarray) -> np.ndarray | None:
        """(m, n) verdicts of the entries ``(r, cols[r, j])``, or None without any."""
        return None if self.forced is None else np.take_along_axis(self.forced, cols, 1)


@dataclass(frozen=True)
class CorpusScores:
    """Scores of the whole corpus, computed on demand: ``ids`` (N,) sorted, ``raw(rows)`` the
    (m, C) float64 scores of ``rows`` (a slice or positions into ``ids``), ``calibration``
    fitted on the corpus, ``fixes``: the corrections used (rows: positions into ``ids``), which
    force the confidences and ranks. Nothing of shape (N, C) is made unless asked for."""

    ids: np.ndarray
    raw: Callable[[slice | np.ndarray], np.ndarray]
    calibration: Calibration
    fixes: Corrections = Corrections.none()

    def rows(self, rows: slice | np.ndarray, *, confidence: bool = True) -> Scored:
        """Scores and confidences of the images at ``rows`` (``confidence=False``: computed
        later for the entries asked for, see :meth:`Scored.confidence_at`)."""
        scores = self.raw(rows)
        forced = self.fixes.block(rows, len(self.ids), scores.shape[1])
        if not confidence:
            return Scored(self.ids[rows], scores, None, self.calibration, forced)
        return Scored(self.ids[rows], scores, force(self.calibration.apply(scores), forced), None, forced)

    def chunks(self, chunk: int = CHUNK, *, confidence: bool = True) -> Iterator[Scored]:
        """The corpus in blocks of ``chunk`` images, in ``ids`` order."""
        for start in range(0, len(self.ids), chunk):
            yield self.rows(slice(start, start + chunk), confidence=confidence)


def run_dir(home: Home, run_id: int) -> Path:
    return home.root / "tagruns" / f"run-{run_id:06d}"


def zero_shot_scores(
    xb: np.ndarray, text: TextSet, labels: Sequence[Label], evidence: Evidence | None = None
) -> np.ndarray:
    """(N, C) float64 cosine scores of (N, D) images, plus the ``evidence`` of corrections
    (:mod:`query.fewshot`), after negatives and parents."""
    sims = xb @ text[0].T if evidence is None else evidence.scores(xb, text[0])
    return structured(xb, sims, text, labels)


def structured(xb: np.ndarray, sims: np.ndarray, text: TextSet, labels: Sequence[Label]) -> np.ndarray:
    """(N, C) ``sims`` of (N, D) images to the labels after negatives and parents."""
    _, negatives, owners = text
    negative = max_per_label(xb @ negatives.T, owners, len(labels)) if len(negatives) else None
    return apply_structure(sims, labels, negative)


def best_labels(scores: np.ndarray, n: int) -> np.ndarray:
    """(m, n) columns of each row's ``n`` highest ``scores`` (m, C), best first; equal scores in
    column order, i.e. exactly ``np.argsort(-scores, axis=1, kind="stable")[:, :n]``, without
    sorting all C columns when n is small."""
    m, c = scores.shape
    neg = -scores
    if n >= c or 4 * n >= c:
        return np.argsort(neg, axis=1, kind="stable")[:, :n]
    part = np.argpartition(neg, n - 1, axis=1)[:, :n]
    vals = np.take_along_axis(neg, part, 1)
    order = np.take_along_axis(part, np.lexsort((part, vals), axis=1), 1)
    kth = vals.max(axis=1, keepdims=True)  # the n-th best score: ties across it need the full sort
    tied = (neg == kth).sum(axis=1) != (vals == kth).sum(axis=1)
    if tied.any():
        order[tied] = np.argsort(neg[tied], axis=1, kind="stable")[:, :n]
    return order


def store_tags(
    catalog: Catalog,
    scored: Scored | Iterable[Scored],
    labels: Sequence[str],
    method: str,
    run_id: int,
    *,
    store_top: int | None = None,
    top: int = 0,
    cuts: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Insert tag rows of ``scored`` (one block or an iterable of blocks): per image every label,
    or its ``store_top`` best, ranked by raw score; rows go in batches of at most ``ROW_BATCH``.

    Returns, per image, its best ``top`` labels (by raw score) whose confidence reaches the
    label's cut in ``cuts`` (the rows a tag run prints); none when ``top`` is 0.
    """
    label_ids = np.asarray(catalog.label_ids(list(labels)), dtype=np.int64)
    n_store = len(labels) if store_top is None else min(store_top, len(labels))
    shown: list[dict[str, Any]] = []
    for block in [scored] if isinstance(scored, Scored) else scored:
        order = best_labels(rank_key(block.scores, block.forced), min(max(n_store, top), len(labels)))
        _insert(catalog, block, order[:, :n_store], label_ids, method, run_id)
        if top:
            shown.extend(_shown(catalog, block, order[:, :top], labels, method, cuts or [0.0] * len(labels)))
    return shown


def _insert(
    catalog: Catalog, block: Scored, order: np.ndarray, label_ids: np.ndarray, method: str, run_id: int
) -> None:
    width = order.shape[1]
    step = max(1, ROW_BATCH // width)
    for a in range(0, len(block.ids), step):
        part = Scored(
            block.ids[a : a + step],
            block.scores[a : a + step],
            None if block.confidence is None else block.confidence[a : a + step],
            block.calibration,
            None if block.forced is None else block.forced[a : a + step],
        )
        cols = order[a : a + step]
        scores = np.take_along_axis(part.scores, cols, 1).ravel().tolist()
        confidence = part.confidence_at(cols).ravel().tolist()
        images = np.repeat(block.ids[a : a + step], width).tolist()
        ranks = np.tile(np.arange(width), (len(cols), 1))
        forced = part.forced_at(cols)
        ranks = (ranks if forced is None else np.where(forced < 0, REJECTED_RANK, ranks)).ravel().tolist()
        rows = [
            {
                "image_id": i,
                "label_id": c,
                "score": s,
                "confidence": p,
                "rank": r,
                "method": method,
                "run_id": run_id,
            }
            for i, c, s, p, r in zip(
                images, label_ids[cols].ravel().tolist(), scores, confidence, ranks, strict=True
            )
        ]
        catalog.add_tags(rows)


def _shown(
    catalog: Catalog,
    block: Scored,
    order: np.ndarray,
    labels: Sequence[str],
    method: str,
    cuts: Sequence[float],
) -> list[dict[str, Any]]:
    uris = {r["id"]: r["uri"] for r in catalog.images(block.ids.tolist(), status=None)}
    scores, confidence = (
        np.take_along_axis(block.scores, order, 1).tolist(),
        block.confidence_at(order).tolist(),
    )
    forced = block.forced_at(order)
    rejected = np.zeros(order.shape, bool) if forced is None else forced < 0
    out = []
    for r, image_id in enumerate(block.ids.tolist()):
        for rank, c in enumerate(order[r].tolist()):
            if confidence[r][rank] < cuts[c] or rejected[r, rank]:
                continue
            out.append(
                {
                    "id": image_id,
                    "uri": uris.get(image_id),
                    "label": labels[c],
                    "score": scores[r][rank],
                    "confidence": round(confidence[r][rank], 6),
                    "rank": rank,
                    "method": method,
                }
            )
    return out
