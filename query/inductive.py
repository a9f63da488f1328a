"""ZLaP inside the product, and keeping a tagged archive tagged as it grows.

A ZLaP tag run fits :class:`query.zlap.ZLaPInductive` on the whole corpus (the graph comes from
the index version's stored kNN graph), takes the transductive scores for the corpus, and stores
the sparse-inductive table (one class id and one value per node) in the run's folder. Images
that later ``index`` runs add are then tagged for every label set already applied, without
re-solving: zero-shot runs by cosine to the stored label embeddings, ZLaP runs by the O(k)
sparse-inductive vote of their neighbours in the run's corpus (method ``zlap-inductive``).
Inductive scores have another scale than transductive ones (about 0.1 against 1e-3), so they
get their own calibration, fitted at tag time on the corpus' own leave-self-out inductive scores
(of the calibration sample's images, :func:`query.calibration.sample_rows`).

Memory at N images and C labels: one pass of C block solves (``ZLaPInductive.fit_predict``)
gives both the transductive scores, kept as (N, C) float32, and the sparse table; blocks are
solved in threads, as many as fit ``SOLVE_MEMORY`` (:func:`solve_workers`). The graph is
dropped once solved; structure (negatives, parents) and calibration are applied per block of
images by :class:`query.scoring.CorpusScores`.

People's corrections are seed nodes beside the text nodes, with a weight ZLaP chooses for itself
on the corrections, leave-self-out (:mod:`query.zlap_seeds`). Leave-self-out scores of a seeded
pair (for calibrating on the corrections) subtract the seed's own contribution ``w (L^-1)_ii``,
with ``(L^-1)_ii`` taken to second order, ``1 + sum_j L_ij^2`` (the series ``sum_t (alpha
Wn)^t``; its third-order term is below alpha^3 = 0.027).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from indexer import vectors
from indexer.catalog import Catalog
from indexer.graph import KnnGraph
from indexer.home import Home
from query.calibration import Calibration, fit_calibration, sample_rows
from query.fewshot import Evidence
from query.learning import Corrections, calibrate_on, force, read_corrections
from query.scoring import CorpusScores, Scored, TagConfig, TextSet, run_dir, store_tags, zero_shot_scores
from query.search import Searcher
from query.tagruns import applied_runs
from query.vocab import recorded_label
from query.zlap import Seeds, ZLaPInductive
from query.zlap_seeds import propagated_scores, seeds_for

INDUCTIVE = "zlap-inductive"
SOLVE_CHUNK = 32  # labels per block solve (the reference solves them one by one)
SOLVE_MEMORY = 16 << 30  # most bytes of CG blocks solved at once (also at most 1/8 of the RAM)


def solve_workers(n_nodes: int, chunk: int = SOLVE_CHUNK) -> int:
    """Threads for the block solves: one per CPU, as many as ``SOLVE_MEMORY`` holds (a block
    of ``chunk`` labels over ``n_nodes`` nodes needs about eight float64 (n_nodes, chunk) arrays:
    2 GB at 1M images and 32 labels: eight threads on a machine with 128 GB)."""
    try:
        budget = min(SOLVE_MEMORY, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8)
    except (ValueError, OSError, AttributeError):
        budget = SOLVE_MEMORY
    return int(max(1, min(os.cpu_count() or 1, budget // (8 * 8 * n_nodes * chunk))))


def leave_self_out(
    graph: KnnGraph, k: int, rows: slice | np.ndarray = slice(None)
) -> tuple[np.ndarray, np.ndarray]:
    """(D, I) of width k for ``rows`` of the graph without the row itself (padded with -1 / 0
    on tiny corpora), other neighbours in their order."""
    D, I = graph.D[rows], graph.I[rows]
    keep = I != np.arange(len(graph.ids))[rows][:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in their order
    kept = np.take_along_axis(keep, order, 1)
    d = np.where(kept, np.take_along_axis(D, order, 1), 0.0).astype(np.float32)
    i = np.where(kept, np.take_along_axis(I, order, 1), -1).astype(np.int64)
    return d, i


def fit_zlap(
    graph: KnnGraph,
    xb: np.ndarray,
    text: TextSet,
    config: TagConfig,
    folder: Path | None,
    *,
    workers: int | None = None,
    fixes: Corrections | None = None,
) -> CorpusScores:
    """Transductive ZLaP scores of the corpus; with ``folder``, stores the inductive table and
    both calibrations there. ``workers``: threads of the block solves (default
    :func:`solve_workers`); the scores do not depend on it. ``fixes``: corrections (rows:
    positions into ``graph.ids``), seed nodes of the solve.

    Negative prompts are class nodes of their own in the graph; their propagated scores then
    penalise their label as in :func:`query.vocab.apply_structure`.
    """
    k = min(config.k, len(graph.ids))
    nodes = np.concatenate([text[0], text[1]]) if len(text[1]) else text[0]
    workers = workers or solve_workers(len(graph.ids) + len(nodes))
    model = ZLaPInductive(config.k, config.gamma, config.alpha, chunk=SOLVE_CHUNK, workers=workers)
    fixes = fixes if fixes is not None else Corrections.none()
    sample = sample_rows(len(graph.ids))
    chosen: list[Seeds | None] = []

    def seeds(built: ZLaPInductive) -> Seeds | None:  # on the built graph, before the solve
        chosen.append(seeds_for(built, fixes, text, config.labels))
        return chosen[0]

    propagated = model.fit_predict(xb, nodes, knn=graph.first(k), dtype=np.float32, seeds=seeds)  # (N, C+M)
    seeded = chosen[0]
    self_weight = _self_weight(model, fixes.rows) if seeded is not None else None
    model.drop_graph()  # solved: sparse scoring needs only the table

    def raw(rows: slice | np.ndarray) -> np.ndarray:
        return propagated_scores(propagated[rows], text, config.labels)

    calibration = fit_calibration(raw(sample), log=True)
    if len(fixes):  # leave-self-out scores of the corrected pairs: without their own seed
        alone = propagated[fixes.rows].astype(np.float64)
        if seeded is not None:
            alone[np.arange(len(fixes)), fixes.cols] -= seeded[2] * self_weight
        loo = propagated_scores(alone, text, config.labels)[np.arange(len(fixes)), fixes.cols]
        calibration = calibrate_on(calibration, loo, fixes)
    if folder is not None:
        xs = xb[sample]
        inductive = propagated_scores(
            model.scores(xs, sparse=True, knn=leave_self_out(graph, k, sample)), text, config.labels
        )
        table = {"pseudo_labels": model.pseudo_labels_, "pseudo_scores": model.pseudo_scores_}
        np.savez(folder / "table.npz", ids=graph.ids, **table)
        top = {"top_a": calibration.top_a, "top_b": calibration.top_b}  # the same global Platt on top
        np.savez(folder / "calibration.npz", **calibration.to_arrays())
        np.savez(
            folder / "calibration-inductive.npz",
            **replace(fit_calibration(inductive, log=True), **top).to_arrays(),
        )
    return CorpusScores(graph.ids, raw, calibration, fixes)


def _self_weight(model: ZLaPInductive, rows: np.ndarray) -> np.ndarray:
    """(n,) second-order ``(L^-1)_ii`` of the image nodes ``rows``: ``1 + sum_{j != i} L_ij^2``."""
    lap = model.graph_.L[model.graph_.n_classes + rows]
    return np.asarray(lap.multiply(lap).sum(axis=1)).ravel()  # L_ii = 1: the row's squares are 1 + the rest


def tag_new_images(home: Home, catalog: Catalog, searcher: Searcher, image_ids: Sequence[int]) -> list[int]:
    """Tag ``image_ids`` (new or changed images) for every label set already applied by a run
    without a filter; returns run ids."""
    if not image_ids:
        return []
    version = searcher.version()
    done = []
    for run in applied_runs(catalog, version.identity.key, to_new_images=True):
        folder = run_dir(home, run["id"])
        if not (folder / "text.npz").exists():
            continue
        ids = np.asarray(sorted(int(i) for i in image_ids), dtype=np.int64)
        xq = vectors.stored_vectors(home, catalog, version.identity, ids.tolist())
        scored = _force_new(
            catalog, run["config"], _score_new(home, catalog, version, folder, run["config"], ids, xq)
        )
        catalog.delete_tags(run["id"], ids.tolist())
        labels = run["config"]["labels"]
        method = INDUCTIVE if run["config"]["method"] == "zlap" else run["config"]["method"]
        store_tags(catalog, scored, labels, method, run["id"], store_top=run["config"].get("store_top"))
        done.append(run["id"])
    return done


def _force_new(catalog: Catalog, config: dict, scored: Scored) -> Scored:
    """``scored`` with the verdicts of the catalog's corrections of its images (runs that use them)."""
    if not config.get("corrections"):
        return scored
    fixes = read_corrections(catalog, tuple(config["labels"])).at(scored.ids)
    forced = fixes.block(slice(None), len(scored.ids), scored.scores.shape[1])
    if forced is None or scored.confidence is None:
        return scored
    return Scored(scored.ids, scored.scores, force(scored.confidence, forced), None, forced)


def _score_new(home, catalog, version, folder: Path, config: dict, ids: np.ndarray, xq: np.ndarray) -> Scored:  # noqa: ANN001
    stored = np.load(folder / "text.npz")
    text: TextSet = (stored["labels"], stored["negatives"], stored["owners"])
    labels = [recorded_label(x) for x in config["vocabulary"]]
    if config["method"] in ("zeroshot", "fewshot"):
        scores = zero_shot_scores(xq, text, labels, Evidence.load(folder / "evidence.npz"))
        calibration = Calibration.from_arrays(dict(np.load(folder / "calibration.npz")))
        return Scored(ids, scores, calibration.apply(scores))
    table = np.load(folder / "table.npz")
    unlabeled = vectors.stored_vectors(home, catalog, version.identity, table["ids"].tolist())
    nodes = np.concatenate([text[0], text[1]]) if len(text[1]) else text[0]
    model = ZLaPInductive.from_table(
        unlabeled,
        nodes,
        table["pseudo_labels"],
        table["pseudo_scores"],
        k=config["k"],
        gamma=config["gamma"],
        alpha=config["alpha"],
    )
    scores = propagated_scores(model.scores(xq, sparse=True), text, labels)
    calibration = Calibration.from_arrays(dict(np.load(folder / "calibration-inductive.npz")))
    return Scored(ids, scores, calibration.apply(scores))
