"""Making corrections: a person confirms or rejects a label for images (by path, URI or catalog id),
in bulk from a CSV, or from the images' own keywords; listing and withdrawing them.

Every image is resolved to its content (sha256) and every input is checked before anything is
written; the corrections themselves are kept by :class:`indexer.catalog_corrections.CorrectionQueries`
(one active correction per content and label, a newer one replacing the older).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import uris
from core.errors import InputError, NotFound
from indexer.catalog import Catalog
from query.search import is_image_id
from query.vocab import MAX_LABEL_CHARS

HEADER_FIRST = ("uri", "id", "uri_or_id", "path", "image")
VERDICT_WORDS = {"yes": "yes", "no": "no"}


def indexed_image(
    catalog: Catalog, image: int | str | os.PathLike[str], base: str | None = None
) -> dict[str, Any]:
    """The catalog row of the indexed image named by ``image``: a catalog id, a path (relative ones
    from ``base``, else the working folder) or an image URI; :class:`NotFound` for any other."""
    key = int(image) if is_image_id(image) and not (base and Path(base, str(image)).exists()) else None
    try:
        row = catalog.image(key if key is not None else uris.normalize(os.fspath(image), base))
    except NotFound:
        what = f"image {key}" if key is not None else uris.normalize(os.fspath(image), base)
        raise NotFound(f"{what} is not in the catalog (index it first: `vistag index PATH`)") from None
    if row["status"] != "indexed" or not row["sha256"]:
        raise NotFound(f"{row['uri']} is {row['status']}, not indexed: only indexed images can be corrected")
    return row


def check_label(label: str) -> str:
    """``label`` with its spaces made single; :class:`InputError` when empty or too long."""
    text = " ".join(str(label).split())
    if not text:
        raise InputError("a correction needs a label (--label LABEL)")
    if len(text) > MAX_LABEL_CHARS:
        raise InputError(f"a label has at most {MAX_LABEL_CHARS} characters")
    return text


def _record(catalog: Catalog, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store ``rows`` (each ``image``: its catalog row, ``label``, ``verdict``, ``source``);
    returns per row ``id`` (the correction), ``state``, ``image`` (id), ``uri``, ``label``, ``verdict``."""
    stored = catalog.add_corrections(
        [{"sha256": r["image"]["sha256"], "uri": r["image"]["uri"]} | _fields(r) for r in rows]
    )
    return [
        {"id": s["id"], "state": s["state"], "image": r["image"]["id"], "uri": r["image"]["uri"]} | _fields(r)
        for r, s in zip(rows, stored, strict=True)
    ]


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    return {"label": row["label"], "verdict": row["verdict"], "source": row["source"]}


def correct(
    catalog: Catalog, images: Sequence[int | str | os.PathLike[str]], label: str, verdict: str
) -> list[dict[str, Any]]:
    """Confirm (``verdict`` ``yes``) or reject (``no``) ``label`` for each of ``images``; every
    image is resolved before anything is written. Returns what :func:`_record` returns."""
    if verdict not in VERDICT_WORDS:
        raise InputError(f"a verdict is yes or no, not {verdict!r}")
    if not images:
        raise InputError("name at least one image (a path, URI or catalog id)")
    name = check_label(label)
    rows = [indexed_image(catalog, image) for image in images]
    return _record(
        catalog, [{"image": r, "label": name, "verdict": verdict, "source": "person"} for r in rows]
    )


def confirm(
    catalog: Catalog, images: Sequence[int | str | os.PathLike[str]], label: str
) -> list[dict[str, Any]]:
    """Record that each of ``images`` has ``label`` (see :func:`correct`)."""
    return correct(catalog, images, label, "yes")


def reject(
    catalog: Catalog, images: Sequence[int | str | os.PathLike[str]], label: str
) -> list[dict[str, Any]]:
    """Record that none of ``images`` has ``label`` (see :func:`correct`)."""
    return correct(catalog, images, label, "no")


def read_csv(catalog: Catalog, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The corrections of a CSV of ``uri_or_id,label[,yes|no]`` rows (default ``yes``; a header row,
    empty rows and ``#`` comments are skipped; relative paths are from the CSV's folder), each
    checked: a bad row is an :class:`InputError` naming its line."""
    path = Path(path).expanduser()
    try:
        lines = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read corrections file {path}: {err}") from err
    rows = []
    for number, row in enumerate(lines, 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() in HEADER_FIRST and [c.lower() for c in cells[1:2]] == ["label"]:
            continue
        rows.append(_csv_row(catalog, path, number, cells))
    if not rows:
        raise InputError(f"{path}: no corrections in the file")
    return rows


def _csv_row(catalog: Catalog, path: Path, number: int, cells: list[str]) -> dict[str, Any]:
    where = f"{path} line {number}"
    if len(cells) not in (2, 3) or not cells[0]:
        raise InputError(f"{where}: expected 'uri_or_id,label[,yes|no]'")
    verdict = VERDICT_WORDS.get(cells[2].lower() if len(cells) == 3 and cells[2] else "yes")
    if verdict is None:
        raise InputError(f"{where}: the third column is yes or no, not {cells[2]!r}")
    try:
        label = check_label(cells[1])
        image = indexed_image(catalog, cells[0], str(path.parent))
    except (InputError, NotFound) as err:
        raise InputError(f"{where}: {err}") from None
    return {"image": image, "label": label, "verdict": verdict, "source": "person"}


def import_csv(catalog: Catalog, path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Record the corrections of the CSV ``path`` (see :func:`read_csv`), all or none."""
    return _record(catalog, read_csv(catalog, path))


def from_keywords(catalog: Catalog, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Confirm each label of ``labels`` for every indexed image that has it among its own keywords
    (any case), with source ``keywords``; once per content and label. A content and label a
    person has corrected is left as the person decided. Returns what :func:`_record` returns."""
    from query.evaluate import keyword_truth  # the same matching as `eval --truth keywords`

    truth = keyword_truth(catalog, [check_label(name) for name in labels])
    decided = {
        (c["sha256"], c["label"].lower()) for c in catalog.corrections(truth.names) if c["source"] == "person"
    }
    rows, seen = [], set()
    labels_of = dict(zip(truth.ids.tolist(), truth.labels, strict=True))
    for image in catalog.images(truth.ids.tolist()):
        for label in sorted(labels_of[image["id"]], key=str.lower):
            key = (image["sha256"], label.lower())
            if image["sha256"] and key not in seen and key not in decided:
                seen.add(key)
                rows.append({"image": image, "label": label, "verdict": "yes", "source": "keywords"})
    return _record(catalog, rows)


def listing(
    catalog: Catalog, label: str | None = None, *, withdrawn: bool = False, limit: int | None = None
) -> list[dict[str, Any]]:
    """Corrections newest first (see :meth:`Catalog.corrections`): ``id``, ``sha256``, ``label``,
    ``verdict``, ``source``, ``uri`` (where the image was when corrected), ``created``,
    ``withdrawn`` and ``images`` (the indexed images with that content now: ``id``, ``uri``)."""
    if limit is not None and limit < 1:
        raise InputError("-n must be at least 1")
    labels = None if label is None else [check_label(label)]
    return catalog.corrections(labels, withdrawn=withdrawn, limit=limit)


def withdraw(catalog: Catalog, ids: Sequence[int]) -> dict[str, list[int]]:
    """Withdraw corrections by id: ``withdrawn`` (ids now withdrawn) and ``already`` (ids withdrawn
    before); an id that was never a correction is :class:`NotFound`, before anything is written."""
    if not ids:
        raise InputError("name at least one correction id (see `vistag corrections`)")
    states = catalog.correction_states(ids)
    unknown = sorted({int(i) for i in ids} - set(states))
    if unknown:
        raise NotFound(f"no correction {', '.join(map(str, unknown))} (see `vistag corrections --all`)")
    done = catalog.withdraw_corrections([i for i, active in states.items() if active])
    return {"withdrawn": done, "already": sorted(i for i, active in states.items() if not active)}
