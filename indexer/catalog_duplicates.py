"""The catalog's side of duplicate finding (a part of :class:`indexer.catalog.Catalog`): what is
compared, identical contents, and people's decisions about groups, kept by content."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from indexer import schema as t

COMPARED = ("id", "uri", "sha256", "phash", "width", "height", "size", "mtime", "taken")


class DuplicateQueries:
    """Duplicate finding's rows and decisions; mixed into :class:`indexer.catalog.Catalog`."""

    engine: Engine

    def compared_images(self) -> list[dict[str, Any]]:
        """Every indexed image with what duplicate finding compares and shows, by id."""
        i = t.images
        query = sa.select(*(i.c[name] for name in COMPARED)).where(i.c.status == "indexed").order_by(i.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def identical_contents(self) -> dict[str, list[int]]:
        """sha256 -> ids (ascending) of the indexed images that share it with another."""
        i = t.images
        shared = (
            sa.select(i.c.sha256)
            .where(i.c.status == "indexed", i.c.sha256.is_not(None))
            .group_by(i.c.sha256)
            .having(sa.func.count() > 1)
        )
        query = sa.select(i.c.sha256, i.c.id).where(i.c.status == "indexed", i.c.sha256.in_(shared))
        out: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for sha, image_id in conn.execute(query.order_by(i.c.sha256, i.c.id)):
                out.setdefault(sha, []).append(int(image_id))
        return out

    def add_duplicate_decision(self, kind: str, members: Mapping[str, str]) -> int:
        """Record a decision (``keep`` or ``not_duplicates``) about contents: sha256 -> role
        (``keep``/``other`` for a kept group, ``pair`` for contents that are not duplicates)."""
        with self.engine.begin() as conn:
            row = {"kind": kind, "created": time.time()}
            decision = int(conn.execute(t.duplicate_decisions.insert().values(**row)).inserted_primary_key[0])
            conn.execute(
                t.duplicate_members.insert(),
                [{"decision_id": decision, "sha256": sha, "role": role} for sha, role in members.items()],
            )
        return decision

    def duplicate_decisions(self) -> list[dict[str, Any]]:
        """Every decision, oldest first: ``id``, ``kind``, ``created``, ``members`` (sha256 -> role)."""
        d, m = t.duplicate_decisions, t.duplicate_members
        query = sa.select(d.c.id, d.c.kind, d.c.created, m.c.sha256, m.c.role).join(
            m, m.c.decision_id == d.c.id
        )
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for decision, kind, created, sha, role in conn.execute(query.order_by(d.c.id)):
                entry = out.setdefault(
                    decision, {"id": decision, "kind": kind, "created": created, "members": {}}
                )
                entry["members"][sha] = role
        return list(out.values())

    def duplicate_decision_count(self) -> int:
        """How many decisions have been recorded (they are never deleted: a change marks new ones)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(t.duplicate_decisions)).scalar() or 0
            )
