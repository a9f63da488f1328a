"""Tagging the whole corpus: zero-shot (cosine to label prompts) or ZLaP propagation.

Every (image, label) pair asked for is stored under the tag run's id with its raw ``score``,
its calibrated ``confidence`` (see :mod:`query.calibration`) and its ``rank`` among the labels
(by raw score: the method's own prediction order). What a later run needs to tag new images
without redoing the corpus is kept in ``HOME/tagruns/run-<id>/`` (labels, label embeddings,
calibration, and for ZLaP the sparse-inductive table), see :mod:`query.inductive`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer import index as versions
from indexer.catalog import Catalog
from indexer.graph import GRAPH_K, knn_graph
from indexer.home import Home
from query.calibration import fit_calibration
from query.search import Searcher
from query.text import DEFAULT_TEMPLATES, TextEncoder, max_per_label
from query.vocab import Label, apply_structure
from vistag.errors import EmptyCorpus, InputError

METHODS = ("zeroshot", "zlap")
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
    """Scores of images for labels: ``ids`` (N,), ``scores`` and ``confidence`` (N, C) float64."""

    ids: np.ndarray
    scores: np.ndarray
    confidence: np.ndarray


def corpus_matrix(home: Home, catalog: Catalog, version: versions.IndexVersion) -> tuple[np.ndarray, np.ndarray]:
    """ids (N,) int64 sorted and vectors (N, D) float32 of every indexed image of the version's model."""
    identity = version.identity
    return versions.gather_vectors(home, catalog.vector_locations(catalog.model_id(identity)), identity.embed_dim)


def run_dir(home: Home, run_id: int) -> Path:
    return home.root / "tagruns" / f"run-{run_id:06d}"


def encode_text(catalog: Catalog, searcher: Searcher, config: TagConfig) -> TextSet:
    """Label and negative-prompt embeddings for ``config`` with the published index's model."""
    encoder = TextEncoder(searcher.model(), catalog=catalog)
    negatives, owners = encoder.encode_negatives(config.labels)
    return encoder.encode_labels(config.labels, config.templates), negatives, owners


def score_corpus(
    home: Home, catalog: Catalog, searcher: Searcher, config: TagConfig, folder: Path | None = None
) -> Scored:
    """Scores of every indexed image for ``config``'s labels; with ``folder``, also what later
    runs need to tag new images (label embeddings, calibration, ZLaP's inductive table)."""
    config.check()
    version = searcher.version()
    text = encode_text(catalog, searcher, config)
    ids, xb = corpus_matrix(home, catalog, version)
    if not len(ids):
        raise EmptyCorpus("no indexed images to tag: run `vistag index PATH` first")
    if folder is not None:
        np.savez(folder / "text.npz", labels=text[0], negatives=text[1], owners=text[2])
    if config.method == "zeroshot":
        scores = zero_shot_scores(xb, text, config.labels)
        calibration = fit_calibration(scores)
        if folder is not None:
            np.savez(folder / "calibration.npz", **calibration.to_arrays())
        return Scored(ids, scores, calibration.apply(scores))
    from query.inductive import fit_zlap

    return fit_zlap(knn_graph(version, ids, xb), xb, text, config, folder)


def tag_corpus(home: Home, catalog: Catalog, searcher: Searcher, config: TagConfig) -> TagResult:
    """Score every indexed image against every label with ``config.method``; store all scores."""
    config.check()
    version = searcher.version()
    params = asdict(config) | {"labels": list(config.names), "vocabulary": [asdict(x) for x in config.labels],
                               "model_key": version.identity.key}  # fmt: skip
    run_id = catalog.start_run("tag", catalog.model_id(version.identity), params)
    try:
        folder = run_dir(home, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        scored = score_corpus(home, catalog, searcher, config, folder)
        store_tags(catalog, scored, config.names, config.method, run_id)
        (folder / "run.json").write_text(json.dumps(params | {"run_id": run_id}, indent=1))
    except BaseException as err:
        catalog.finish_run(run_id, "failed", {}, message=f"{type(err).__name__}: {err}")
        raise
    catalog.finish_run(run_id, "ok", {"listed": len(scored.ids)})
    cuts = [max(config.min_confidence, (config.thresholds or {}).get(n, 0.0)) for n in config.names]
    shown = top_rows(catalog, scored, config.names, config.method, config.top, cuts)
    return TagResult(run_id, config.names, config.method, len(scored.ids), shown)


def zero_shot_scores(xb: np.ndarray, text: TextSet, labels: Sequence[Label]) -> np.ndarray:
    """(N, C) float64 cosine scores of (N, D) images, after negatives and parents."""
    labels_t, negatives, owners = text
    negative = max_per_label(xb @ negatives.T, owners, len(labels)) if len(negatives) else None
    return apply_structure(xb @ labels_t.T, labels, negative)


def store_tags(catalog: Catalog, scored: Scored, labels: Sequence[str], method: str, run_id: int) -> None:
    """Insert one tag row per (image, label), ranked by raw score within each image."""
    label_ids = np.asarray(catalog.label_ids(list(labels)), dtype=np.int64)
    order = np.argsort(-scored.scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :].repeat(len(order), 0), axis=1)
    chunk = max(1, 50_000 // len(labels))
    for start in range(0, len(scored.ids), chunk):
        rows = [
            {"image_id": int(scored.ids[r]), "label_id": int(label_ids[c]), "score": float(scored.scores[r, c]),
             "confidence": float(scored.confidence[r, c]), "rank": int(ranks[r, c]), "method": method,
             "run_id": run_id}  # fmt: skip
            for r in range(start, min(start + chunk, len(scored.ids)))
            for c in range(len(labels))
        ]
        catalog.add_tags(rows)


def top_rows(
    catalog: Catalog, scored: Scored, labels: Sequence[str], method: str, top: int, cuts: Sequence[float]
) -> list[dict[str, Any]]:
    """Per image its best ``top`` labels (by raw score) whose confidence reaches the label's cut."""
    uris = {r["id"]: r["uri"] for r in catalog.images(scored.ids.tolist(), status=None)}
    order = np.argsort(-scored.scores, axis=1, kind="stable")[:, :top]
    out = []
    for r, image_id in enumerate(scored.ids.tolist()):
        for rank, c in enumerate(order[r].tolist()):
            if scored.confidence[r, c] < cuts[c]:
                continue
            out.append({"id": image_id, "uri": uris.get(image_id), "label": labels[c],
                        "score": float(scored.scores[r, c]), "confidence": round(float(scored.confidence[r, c]), 6),
                        "rank": rank, "method": method})  # fmt: skip
    return out
