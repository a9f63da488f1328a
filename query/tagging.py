"""Zero-shot tagging of the whole corpus: label embeddings against every image embedding.

Scores are cosine similarities between an image and a label's prompt ensemble. Every (image,
label) pair asked for is stored under the tag run's id with its rank among the labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer import index as versions
from indexer.catalog import Catalog
from indexer.home import Home
from query.search import Searcher
from query.text import DEFAULT_TEMPLATES, TextEncoder
from vistag.errors import EmptyCorpus, InputError

MAX_LABEL_CHARS = 200
CHUNK = 65_536


def parse_labels(spec: str | Sequence[str]) -> list[str]:
    """Labels from a file (one per line, # comments) or a comma-separated list, or a list."""
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if path.is_file():
            try:
                raw = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(f"cannot read label file {path}: {err}") from err
            raw = [line for line in raw if not line.lstrip().startswith("#")]
        else:
            raw = spec.split(",")
    else:
        raw = list(spec)
    labels = list(dict.fromkeys(label.strip() for label in raw if label.strip()))
    if not labels:
        raise InputError("no labels given: pass a file with one label per line or a comma-separated list")
    for label in labels:
        if len(label) > MAX_LABEL_CHARS:
            raise InputError(f"label longer than {MAX_LABEL_CHARS} characters: {label[:40]!r}...")
    return labels


@dataclass(frozen=True)
class TagResult:
    """A finished tag run: its id, labels, and per image the top labels (best first)."""

    run_id: int
    labels: tuple[str, ...]
    method: str
    images: int
    top: list[dict[str, Any]]


def corpus_vectors(home: Home, catalog: Catalog, version: versions.IndexVersion) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks of (ids (n,) int64, vectors (n, D) float32) of every indexed image of the version's model."""
    identity = version.identity
    model_id = catalog.model_id(identity)
    locations = catalog.vector_locations(model_id)
    for start in range(0, len(locations), CHUNK):
        yield versions.gather_vectors(home, locations[start : start + CHUNK], identity.embed_dim)


def tag_zero_shot(
    home: Home, catalog: Catalog, searcher: Searcher, labels: Sequence[str], top: int = 3,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> TagResult:  # fmt: skip
    """Score every indexed image against every label; store all scores, return the top ``top``."""
    if top < 1:
        raise InputError("--top must be at least 1")
    version = searcher.version()
    text = TextEncoder(searcher.model()).encode_labels(labels, templates)
    label_ids = catalog.label_ids(list(labels))
    run_id = catalog.start_run("tag", catalog.model_id(version.identity), {"labels": list(labels), "method": "zeroshot"})
    shown: list[dict[str, Any]] = []
    count = 0
    try:
        for ids, xb in corpus_vectors(home, catalog, version):
            scores = xb @ text.T
            order = np.argsort(-scores, axis=1, kind="stable")
            catalog.add_tags(_tag_rows(ids, scores, order, label_ids, run_id))
            uris = {r["id"]: r["uri"] for r in catalog.images(ids.tolist())}
            shown += _top_rows(ids, scores, order, labels, uris, top)
            count += len(ids)
    except BaseException as err:
        catalog.finish_run(run_id, "failed", {}, message=f"{type(err).__name__}: {err}")
        raise
    if not count:
        catalog.finish_run(run_id, "failed", {}, message="no indexed images")
        raise EmptyCorpus("no indexed images to tag: run `vistag index PATH` first")
    catalog.finish_run(run_id, "ok", {"listed": count})
    return TagResult(run_id, tuple(labels), "zeroshot", count, shown)


def _tag_rows(ids: np.ndarray, scores: np.ndarray, order: np.ndarray, label_ids: list[int], run_id: int) -> list[dict]:
    rows = []
    for r, image_id in enumerate(ids.tolist()):
        for rank, c in enumerate(order[r].tolist()):
            rows.append({"image_id": image_id, "label_id": label_ids[c], "score": float(scores[r, c]),
                         "rank": rank, "method": "zeroshot", "run_id": run_id})  # fmt: skip
    return rows


def _top_rows(ids, scores, order, labels, uris, top) -> list[dict[str, Any]]:  # noqa: ANN001
    out = []
    for r, image_id in enumerate(ids.tolist()):
        for rank, c in enumerate(order[r, :top].tolist()):
            out.append({"id": image_id, "uri": uris.get(image_id), "label": labels[c],
                        "score": round(float(scores[r, c]), 6), "rank": rank, "method": "zeroshot"})  # fmt: skip
    return out
