"""Evaluation of tagging against ground truth, fitted thresholds, and per-image explanations.

Truth is a CSV of ``uri,label`` rows (a header line ``uri,label`` is optional; an image with
several labels has several rows; relative paths are taken from the CSV's folder), or
``keywords`` (:data:`KEYWORDS`): the keywords the images already carry (read at index time from
XMP, IPTC and sidecars), each image labelled with every label of the label set among them
(case-insensitive); indexed images with none of the labels are left out. Metrics,
computed on the truth images only, with scores from the whole archive (ZLaP uses all of it):

- top-1 accuracy: the image's best label (by raw score) is one of its true labels;
- per label, precision and recall of "confidence >= threshold" (``min_confidence``, or the
  label's fitted threshold);
- mAP: per label, average precision of the truth images ranked by that label's score.

Evaluation scores the corpus itself (calibration and ZLaP need all of it) but never reads stored
tag rows, so it works the same whatever ``--store-top`` earlier runs used; only the truth
images' (T, C) scores are materialised.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core import uris
from core.errors import InputError, NotFound
from core.photometa import keyword_key
from indexer.catalog import Catalog
from indexer.home import Home
from query.learning import Corrections
from query.scoring import Scored, TagConfig
from query.search import Searcher
from query.shots import evaluate_shots
from query.tagging import load_corpus, score_corpus

KEYWORDS = "keywords"  # --truth keywords: the images' own keywords are the truth


@dataclass(frozen=True)
class Truth:
    """Catalog ids (T,) of the truth images and their label sets; ``source``: the CSV's path or
    ``keywords``; ``left_out``: indexed images a keyword truth left out (none of the labels)."""

    ids: np.ndarray
    labels: list[set[str]]
    source: str = ""
    left_out: int = 0

    @property
    def names(self) -> list[str]:
        return sorted(set().union(*self.labels))


def read_truth(path: str | Path, catalog: Catalog) -> Truth:
    """Parse a ``uri,label`` CSV; unknown images are an error naming the line."""
    path = Path(path).expanduser()
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read truth file {path}: {err}") from err
    by_image: dict[int, set[str]] = {}
    for number, row in enumerate(rows, 1):
        if (
            not row
            or row[0].startswith("#")
            or (number == 1 and [c.strip() for c in row] == ["uri", "label"])
        ):
            continue
        if len(row) != 2 or not row[1].strip():
            raise InputError(f"{path} line {number}: expected 'uri,label'")
        uri = uris.normalize(row[0].strip(), str(path.parent))
        try:
            image = catalog.image(uri)
        except NotFound:
            raise InputError(f"{path} line {number}: {uri} is not in the catalog") from None
        if image["status"] == "indexed":
            by_image.setdefault(image["id"], set()).add(row[1].strip())
    if not by_image:
        raise InputError(f"{path}: no indexed images in the truth file")
    ids = sorted(by_image)
    return Truth(np.asarray(ids, dtype=np.int64), [by_image[i] for i in ids], str(path))


def keyword_truth(catalog: Catalog, names: Sequence[str]) -> Truth:
    """The truth of the images' keywords: every indexed image that has one of ``names`` among its
    keywords (case-insensitive), labelled with each of them (spelt as in ``names``)."""
    spelling = {keyword_key(name): name for name in names}  # the catalog's own matching rule
    by_image = catalog.images_with_keywords(list(spelling))
    if not by_image:
        raise InputError(f"no indexed image has one of the labels among its keywords: {', '.join(names)}")
    ids = sorted(by_image)
    labels = [{spelling[w] for w in by_image[i]} for i in ids]
    left_out = catalog.counts()["indexed"] - len(ids)
    return Truth(np.asarray(ids, dtype=np.int64), labels, KEYWORDS, left_out)


def _average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positive[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def metrics(
    scored: Scored, names: Sequence[str], truth: Truth, thresholds: dict[str, float]
) -> dict[str, Any]:
    """Top-1 accuracy, per-label precision/recall at ``thresholds``, and mAP on the truth images."""
    pos = {int(i): p for p, i in enumerate(scored.ids.tolist())}
    rows = np.array([pos[int(i)] for i in truth.ids])
    scores, conf = scored.scores[rows], scored.confidence[rows]
    best = [names[c] for c in scores.argmax(axis=1)]
    top1 = float(np.mean([b in t for b, t in zip(best, truth.labels, strict=True)]))
    per_label = {}
    for c, name in enumerate(names):
        positive = np.array([name in t for t in truth.labels])
        predicted = conf[:, c] >= thresholds[name]
        tp = int((predicted & positive).sum())
        per_label[name] = {
            "precision": tp / max(int(predicted.sum()), 1),
            "recall": tp / max(int(positive.sum()), 1),
            "ap": _average_precision(scores[:, c], positive),
            "support": int(positive.sum()),
            "threshold": thresholds[name],
        }
    aps = [v["ap"] for v in per_label.values() if not np.isnan(v["ap"])]
    return {
        "top1": top1,
        "map": float(np.mean(aps)) if aps else float("nan"),
        "labels": per_label,
        "images": len(truth.ids),
    }


def fit_thresholds(scored: Scored, names: Sequence[str], truth: Truth) -> dict[str, float]:
    """Per label, the confidence threshold with the best F1 on the truth images."""
    pos = {int(i): p for p, i in enumerate(scored.ids.tolist())}
    conf = scored.confidence[[pos[int(i)] for i in truth.ids]]
    out = {}
    for c, name in enumerate(names):
        positive = np.array([name in t for t in truth.labels])
        best, best_f1 = 0.5, -1.0
        for threshold in np.unique(conf[:, c]):
            predicted = conf[:, c] >= threshold
            tp = (predicted & positive).sum()
            f1 = 2 * tp / max(predicted.sum() + positive.sum(), 1)
            if f1 > best_f1:
                best, best_f1 = float(threshold), f1
        out[name] = best
    return out


def evaluate(
    home: Home,
    catalog: Catalog,
    searcher: Searcher,
    truth: Truth,
    config: TagConfig,
    methods: Sequence[str] = ("zeroshot", "zlap"),
    fit: bool = False,
    shots: Sequence[int] = (),
) -> dict[str, Any]:
    """Metrics per method on ``truth``; ``fit`` also fits per-label thresholds on it. The report's
    ``truth``: its ``source``, ``images`` evaluated and ``left_out``. People's corrections are not
    used (the truth would leak into the scores); ``shots`` (e.g. (0, 1, 2, 4, 8)) simulates them
    (:mod:`query.shots`) and adds ``shots`` and ``shots_test_images`` to the report."""
    names = list(config.names)
    missing = sorted(set(truth.names) - set(names))
    if missing:
        raise InputError(f"truth labels not in the label set: {', '.join(missing)}")
    about = {"source": truth.source, "images": len(truth.ids), "left_out": truth.left_out}
    out: dict[str, Any] = {"labels": names, "truth": about, "methods": {}}
    loaded = load_corpus(home, catalog, searcher, config)  # the same vectors and texts for every method
    for method in methods:
        corpus = score_corpus(
            home,
            catalog,
            searcher,
            replace(config, method=method),
            corrections=Corrections.none(),
            corpus=loaded,
        )
        position = {int(i): p for p, i in enumerate(corpus.ids.tolist())}
        missing_ids = [int(i) for i in truth.ids if int(i) not in position]
        if missing_ids:
            raise InputError(
                f"{len(missing_ids)} truth images have no vector in the index (image id {missing_ids[0]})"
            )
        scored = corpus.rows(np.array([position[int(i)] for i in truth.ids], dtype=np.int64))
        fixed = dict.fromkeys(names, config.min_confidence or 0.5)
        result = metrics(scored, names, truth, fixed)
        if fit:
            fitted = fit_thresholds(scored, names, truth)
            result["fitted"] = metrics(scored, names, truth, fitted)
        out["methods"][method] = result
    if shots:

        def score(cfg: TagConfig, fixes: Corrections) -> Any:
            return score_corpus(home, catalog, searcher, cfg, corrections=fixes, corpus=loaded)

        found = evaluate_shots(score, truth.ids, truth.labels, names, config, methods, shots)
        out |= {"shots": found["shots"], "shots_test_images": found["test_images"]}
    return out


def load_thresholds(path: str | Path) -> dict[str, float]:
    try:
        data = json.loads(Path(path).expanduser().read_text())
        return {str(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError) as err:
        raise InputError(
            f"cannot read thresholds {path}: expected a JSON object label -> number ({err})"
        ) from err
