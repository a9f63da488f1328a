"""Export tags and metadata for every image, as JSON or CSV (tags as a JSON list in one column)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from core.errors import InputError
from indexer.catalog import Catalog

COLUMNS = ("id", "uri", "status", "sha256", "size", "mtime", "width", "height", "tags")
FORMATS = ("json", "csv")


def export_rows(catalog: Catalog, tag_run: int | None = None) -> list[dict[str, Any]]:
    """One dict per non-deleted image, with ``tags``: [{label, score, confidence, rank, method}] best first."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for tag in catalog.tags(tag_run):
        by_image.setdefault(tag["image_id"], []).append(
            {k: tag[k] for k in ("label", "score", "confidence", "rank", "method")}
        )
    rows = []
    for image in catalog.images(status=None):
        if image["status"] == "deleted":
            continue
        rows.append({c: image[c] for c in COLUMNS if c != "tags"} | {"tags": by_image.get(image["id"], [])})
    return rows


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """Render export rows as ``json`` (a list of objects) or ``csv`` (header + one line per image)."""
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt != "csv":
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row | {"tags": json.dumps(row["tags"])})
    return buf.getvalue()
