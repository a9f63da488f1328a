"""Export tags and metadata for every image (or those that pass a filter), as JSON or CSV (tags as
a JSON list in one column), or the stored embeddings as a NumPy ``.npz`` archive."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, BinaryIO

import numpy as np

from core.errors import InputError
from indexer.catalog import Catalog, ImageFilter
from indexer.catalog_meta import FILE_FIELDS, PHOTO_FIELDS

# the photo metadata after tags, so the first nine columns stay where they were
COLUMNS = (*FILE_FIELDS, "tags", *PHOTO_FIELDS, "keywords")
LIST_COLUMNS = ("tags", "keywords")  # a JSON list in one CSV column
FORMATS = ("json", "csv", "npz")
TEXT_FORMATS = ("json", "csv")


def export_rows(
    catalog: Catalog, tag_run: int | None = None, where: ImageFilter | None = None
) -> list[dict[str, Any]]:
    """One dict per non-deleted image (with ``where``: per indexed image that passes it), with
    ``tags``: [{label, score, confidence, rank, method}] best first, its photo metadata (None where
    unknown) and ``keywords`` (as spelt, sorted in any case)."""
    passing = set(catalog.matching_ids(where).tolist()) if where else None
    keywords = catalog.keywords_by_image()
    by_image: dict[int, list[dict[str, Any]]] = {}
    for tag in catalog.tags(tag_run):
        by_image.setdefault(tag["image_id"], []).append(
            {k: tag[k] for k in ("label", "score", "confidence", "rank", "method")}
        )
    rows = []
    for image in catalog.images(status=None):
        if image["status"] == "deleted" or (passing is not None and image["id"] not in passing):
            continue
        tags = by_image.get(image["id"], [])
        rows.append(
            {c: image[c] for c in (*FILE_FIELDS, *PHOTO_FIELDS)}
            | {"tags": tags, "keywords": keywords.get(image["id"], [])}
        )
    return rows


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """Render export rows as ``json`` (a list of objects) or ``csv`` (header + one line per image)."""
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt != "csv":
        raise InputError(f"unknown text export format {fmt!r}; choose one of {', '.join(TEXT_FORMATS)}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row | {c: json.dumps(row[c], ensure_ascii=False) for c in LIST_COLUMNS})
    return buf.getvalue()


def write_npz(
    target: BinaryIO, ids: np.ndarray, uris: list[str], xb: np.ndarray, model: dict[str, Any]
) -> None:
    """An ``.npz`` of ``ids`` (N,) int64, ``uris`` (N,) str, ``vectors`` (N, D) float32 (the
    stored L2-normalised embeddings, row i of image ids[i]) and ``model`` (its identity as JSON)."""
    np.savez(
        target,
        ids=np.asarray(ids, np.int64),
        uris=np.asarray(uris, dtype=str),
        vectors=np.asarray(xb, np.float32),
        model=np.asarray(json.dumps(model, sort_keys=True)),
    )
