"""Tagging the whole corpus: zero-shot (cosine to label prompts) or ZLaP propagation.

A tag run scores every indexed image against its labels and stores the scores (see
:mod:`query.scoring`); a filtered run stores them only for the images that pass its filter, and
is not applied to images indexed later. What a later run needs to tag new images without redoing the corpus is
kept in ``HOME/tagruns/run-<id>/`` (labels, label embeddings, calibration, and for ZLaP the
sparse-inductive table), see :mod:`query.inductive`.

Memory: scores are computed, calibrated, ranked and stored ``CHUNK`` images at a time
(:class:`query.scoring.CorpusScores`), so beyond the corpus' vectors (N, D) a zero-shot run
holds O(CHUNK x C); a ZLaP run also holds the transductive solution (N, C+negatives) as float32
(the solve's output), the graph, and the calibration sample (at most ``calibration.MAX_ROWS``
rows).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import EmptyCorpus, InputError
from indexer import recovery, vectors, versions
from indexer.catalog import Catalog, ImageFilter
from indexer.graph import knn_graph
from indexer.home import Home
from query.calibration import fit_calibration, sample_rows
from query.fewshot import build_evidence
from query.inductive import fit_zlap
from query.learning import Corrections, calibrate_on, read_corrections
from query.scoring import (
    CHUNK,
    CorpusScores,
    Scored,
    TagConfig,
    TagResult,
    TextSet,
    run_dir,
    store_tags,
    structured,
    zero_shot_scores,
)
from query.search import Searcher

FULL_ROWS_MAX = (
    100_000_000  # tag rows a run stores without --store-top unless --store-all (about 15 min on SQLite)
)


def corpus_matrix(
    home: Home, catalog: Catalog, version: versions.IndexVersion
) -> tuple[np.ndarray, np.ndarray]:
    """ids (N,) int64 sorted and vectors (N, D) float32 of every indexed image of the version's model."""
    identity = version.identity
    return vectors.gather_vectors(
        home, catalog.vector_locations(catalog.model_id(identity)), identity.embed_dim
    )


def encode_text(catalog: Catalog, searcher: Searcher, config: TagConfig) -> TextSet:
    """Label and negative-prompt embeddings for ``config`` with the published index's model."""
    encoder = searcher.text_encoder(catalog)
    negatives, owners = encoder.encode_negatives(config.labels)
    return encoder.encode_labels(config.labels, config.templates), negatives, owners


# what scoring reads: the published version, the label (and negative) embeddings, ids (N,), vectors (N, D)
Corpus = tuple[versions.IndexVersion, TextSet, np.ndarray, np.ndarray]


def load_corpus(home: Home, catalog: Catalog, searcher: Searcher, config: TagConfig) -> Corpus:
    """The published index version, ``config``'s text embeddings and every indexed image's vector."""
    version = searcher.version()
    text = encode_text(catalog, searcher, config)
    ids, xb = corpus_matrix(home, catalog, version)
    if not len(ids):
        raise EmptyCorpus("no indexed images to tag: run `vistag index PATH` first")
    return version, text, ids, xb


def score_corpus(
    home: Home,
    catalog: Catalog,
    searcher: Searcher,
    config: TagConfig,
    folder: Path | None = None,
    corrections: Corrections | None = None,
    corpus: Corpus | None = None,
) -> CorpusScores:
    """Scores of every indexed image for ``config``'s labels, block by block; with ``folder``,
    also what later runs need to tag new images (label embeddings, calibration, ZLaP's
    inductive table). The calibration is fitted on :func:`query.calibration.sample_rows`.

    ``corrections`` (rows: image ids): the corrections used; by default the catalog's active
    ones of the labels when ``config.corrections``, else none. ``corpus``: what
    :func:`load_corpus` returns for ``config``'s labels, when the caller scores it several times."""
    config.check()
    version, text, ids, xb = corpus or load_corpus(home, catalog, searcher, config)
    fixes = (corrections_of(catalog, config) if corrections is None else corrections).at(ids)
    if folder is not None:
        np.savez(folder / "text.npz", labels=text[0], negatives=text[1], owners=text[2])
    if config.method == "zlap":
        return fit_zlap(knn_graph(version, ids, xb), xb, text, config, folder, fixes=fixes)
    return image_space_scores(ids, xb, text, config, fixes, folder)


def corrections_of(catalog: Catalog, config: TagConfig) -> Corrections:
    """The corrections a run with ``config`` uses: the catalog's active ones of its labels, or none
    with ``corrections`` off (rows are image ids)."""
    return read_corrections(catalog, config.names) if config.corrections else Corrections.none()


def image_space_scores(
    ids: np.ndarray, xb: np.ndarray, text: TextSet, config: TagConfig, fixes: Corrections, folder: Path | None
) -> CorpusScores:
    """Zero-shot or few-shot scores of the corpus ``ids`` (N,), ``xb`` (N, D) with the evidence of
    ``fixes`` (rows: positions), calibrated (on the corrected pairs when there are enough)."""
    sample = sample_rows(len(ids))
    evidence = build_evidence(config.method, xb, fixes, text[0], sample)

    def raw(rows: slice | np.ndarray) -> np.ndarray:
        return zero_shot_scores(xb[rows], text, config.labels, evidence)

    calibration = fit_calibration(raw(sample))
    if evidence is not None:
        xs = xb[fixes.rows]
        loo = structured(xs, evidence.add_without_self(xs, xs @ text[0].T, fixes.rows), text, config.labels)
        calibration = calibrate_on(calibration, loo[np.arange(len(fixes)), fixes.cols], fixes)
    if folder is not None:
        np.savez(folder / "calibration.npz", **calibration.to_arrays())
        if evidence is not None:
            evidence.save(folder / "evidence.npz")
    return CorpusScores(ids, raw, calibration, fixes)


def _params(
    config: TagConfig, version: versions.IndexVersion, where: ImageFilter | None, used: Corrections
) -> dict[str, Any]:
    """What the run's row and ``run.json`` record of it."""
    return asdict(config) | {
        "corrections_used": used.counts(),
        "labels": list(config.names),
        "vocabulary": [asdict(x) for x in config.labels],
        "model_key": version.identity.key,
        "filter": asdict(where) if where else None,
    }


def _passing(scores: CorpusScores, keep: np.ndarray, chunk: int) -> Iterator[Scored]:
    """The blocks of ``chunk`` images of ``scores`` whose ids are among ``keep``."""
    rows = np.flatnonzero(np.isin(scores.ids, keep))
    for start in range(0, len(rows), chunk):
        yield scores.rows(rows[start : start + chunk], confidence=False)


def tag_corpus(
    home: Home,
    catalog: Catalog,
    searcher: Searcher,
    config: TagConfig,
    *,
    chunk: int = CHUNK,
    where: ImageFilter | None = None,
) -> TagResult:
    """Score every indexed image against every label with ``config.method``; store all scores
    (or each image's ``config.store_top`` best), ``chunk`` images at a time. With ``where``, every
    image is still scored (ZLaP propagates over all of them) but tags are stored and shown only
    for the indexed images that pass it; such a run is not applied to images indexed later."""
    config.check()
    version = searcher.version()
    keep = catalog.matching_ids(where) if where else None
    rows = int(version.manifest.get("count", 0)) * len(config.labels)
    if config.store_top is None and not config.store_all and rows > FULL_ROWS_MAX:
        raise InputError(
            f"storing every score would write {rows:,} tag rows ({rows // len(config.labels):,} images x "
            f"{len(config.labels):,} labels): pass --store-top N to keep each image's N best, or --store-all"
        )
    fixes = corrections_of(catalog, config)
    params = _params(config, version, where, fixes)
    cuts = [max(config.min_confidence, (config.thresholds or {}).get(n, 0.0)) for n in config.names]
    with recovery.writer(home, catalog):  # one writer per home: a run found running under the lock is dead
        run_id = catalog.start_run("tag", catalog.model_id(version.identity), params)
        try:
            folder = run_dir(home, run_id)
            folder.mkdir(parents=True, exist_ok=True)
            scores = score_corpus(home, catalog, searcher, config, folder, corrections=fixes)
            blocks = scores.chunks(chunk, confidence=False) if keep is None else _passing(scores, keep, chunk)
            shown = store_tags(
                catalog,
                blocks,
                config.names,
                config.method,
                run_id,
                store_top=config.store_top,
                top=config.top,
                cuts=cuts,
            )
            (folder / "run.json").write_text(json.dumps(params | {"run_id": run_id}, indent=1))
        except BaseException as err:
            catalog.finish_run(run_id, "failed", {}, message=f"{type(err).__name__}: {err}")
            raise
        images = len(scores.ids) if keep is None else int(np.isin(scores.ids, keep).sum())
        catalog.finish_run(run_id, "ok", {"listed": images})
    return TagResult(run_id, config.names, config.method, images, shown)
