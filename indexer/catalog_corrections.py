"""People's corrections of tags (a part of :class:`indexer.catalog.Catalog`): an image's content
confirmed (``yes``) or rejected (``no``) for a label, kept by content hash so a correction follows
the image through moves, copies and re-indexing.

A label matches whatever its case (``Dog`` corrects ``dog``). Per content and label, one
correction is active: a newer one withdraws the older (a person changing their mind); an identical
active one is kept as it is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.errors import InputError
from indexer import schema as t
from indexer.database import chunks, writing

VERDICTS = ("yes", "no")
SOURCES = ("person", "keywords")
FIELDS = ("id", "sha256", "label", "verdict", "source", "uri", "created", "withdrawn")


def _check(row: Mapping[str, Any]) -> None:
    if row["verdict"] not in VERDICTS:
        raise InputError(f"a correction's verdict is yes or no, not {row['verdict']!r}")
    if row["source"] not in SOURCES:
        raise InputError(f"a correction's source is one of {', '.join(SOURCES)}, not {row['source']!r}")
    if not str(row["label"]).strip():
        raise InputError("a correction needs a label")
    if not row.get("sha256"):
        raise InputError(f"cannot correct {row.get('uri')!r}: its content was never read")


class CorrectionQueries:
    """Storing, listing and withdrawing corrections; mixed into :class:`indexer.catalog.Catalog`."""

    engine: Engine

    def add_corrections(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Record corrections: each row ``sha256``, ``label``, ``verdict`` (yes/no), ``source``
        (person/keywords), ``uri`` (optional). Returns per row ``{"id", "state"}``: ``added``,
        ``replaced`` (an active one of the same content and label with the other verdict or source
        was withdrawn) or ``unchanged`` (the same one is already active; its id)."""
        for row in rows:
            _check(row)
        c = t.corrections
        now = time.time()
        out = []
        with writing("corrections"), self.engine.begin() as conn:
            for row in rows:
                label = " ".join(str(row["label"]).split())
                active = _active(conn, row["sha256"], label)
                if active and (active["verdict"], active["source"]) == (row["verdict"], row["source"]):
                    out.append({"id": int(active["id"]), "state": "unchanged"})
                    continue
                if active:
                    conn.execute(c.update().where(c.c.id == active["id"]).values(withdrawn=now))
                values = {
                    "sha256": row["sha256"],
                    "label": label,
                    "verdict": row["verdict"],
                    "source": row["source"],
                    "uri": row.get("uri"),
                    "created": now,
                }
                new_id = int(conn.execute(c.insert().values(**values)).inserted_primary_key[0])
                out.append({"id": new_id, "state": "replaced" if active else "added"})
        return out

    def withdraw_corrections(self, ids: Sequence[int]) -> list[int]:
        """Withdraw the active corrections among ``ids``; returns those withdrawn, ascending."""
        c = t.corrections
        done: list[int] = []
        with writing("withdrawals"), self.engine.begin() as conn:
            for chunk in chunks(sorted({int(i) for i in ids})):
                active = c.c.id.in_(chunk) & c.c.withdrawn.is_(None)
                done.extend(int(i) for i in conn.execute(sa.select(c.c.id).where(active)).scalars())
                conn.execute(c.update().where(active).values(withdrawn=time.time()))
        return sorted(done)

    def corrections(
        self,
        labels: Sequence[str] | None = None,
        *,
        withdrawn: bool = False,
        limit: int | None = None,
        contents: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Corrections, newest first (active ones only unless ``withdrawn``), optionally of some
        labels or some contents (sha256); each with ``images``: the ids and uris of the indexed
        images with that content now."""
        c = t.corrections
        query = sa.select(*(c.c[name] for name in FIELDS)).order_by(c.c.id.desc())
        if not withdrawn:
            query = query.where(c.c.withdrawn.is_(None))
        if labels is not None:
            query = query.where(sa.func.lower(c.c.label).in_(sorted({x.lower() for x in labels})))
        if contents is not None:
            query = query.where(c.c.sha256.in_(sorted(set(contents))))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        where = self.indexed_by_content([r["sha256"] for r in rows])
        for row in rows:
            row["images"] = where.get(row["sha256"], [])
        return rows

    def correction_states(self, ids: Sequence[int]) -> dict[int, bool]:
        """Correction id -> whether it is active, for those of ``ids`` that exist."""
        c = t.corrections
        out: dict[int, bool] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted({int(i) for i in ids})):
                for cid, gone in conn.execute(sa.select(c.c.id, c.c.withdrawn).where(c.c.id.in_(chunk))):
                    out[int(cid)] = gone is None
        return out

    def indexed_by_content(self, shas: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """sha256 -> the indexed images (``id``, ``uri``, by id) with that content."""
        i = t.images
        out: dict[str, list[dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(set(shas))):
                query = sa.select(i.c.sha256, i.c.id, i.c.uri).where(
                    i.c.status == "indexed", i.c.sha256.in_(chunk)
                )
                for sha, image_id, uri in conn.execute(query.order_by(i.c.id)):
                    out.setdefault(sha, []).append({"id": int(image_id), "uri": uri})
        return out

    def correction_pairs(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The active corrections of ``labels`` on indexed images, as three (n,) arrays: image id
        (int64), the label's position in ``labels`` (int64) and the verdict (bool, True = confirmed),
        sorted by (image, label). Every indexed copy of a corrected content counts."""
        position = {name.lower(): p for p, name in enumerate(labels)}
        c, i = t.corrections, t.images
        query = (
            sa.select(i.c.id, c.c.label, c.c.verdict)
            .join(i, i.c.sha256 == c.c.sha256)
            .where(c.c.withdrawn.is_(None), i.c.status == "indexed")
        )
        found: dict[tuple[int, int], bool] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(position)):
                for image_id, label, verdict in conn.execute(
                    query.where(sa.func.lower(c.c.label).in_(chunk))
                ):
                    found[(int(image_id), position[label.lower()])] = verdict == "yes"
        keys = sorted(found)
        ids = np.fromiter((k[0] for k in keys), np.int64, len(keys))
        cols = np.fromiter((k[1] for k in keys), np.int64, len(keys))
        return ids, cols, np.fromiter((found[k] for k in keys), bool, len(keys))


def _active(conn: Connection, sha256: str, label: str) -> dict[str, Any] | None:
    c = t.corrections
    query = sa.select(c.c.id, c.c.verdict, c.c.source).where(
        c.c.sha256 == sha256, sa.func.lower(c.c.label) == label.lower(), c.c.withdrawn.is_(None)
    )
    row = conn.execute(query).mappings().first()
    return dict(row) if row else None
