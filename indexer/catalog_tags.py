"""The catalog's labels, tags and cached text embeddings (a part of :class:`indexer.catalog.Catalog`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.errors import NotFound
from indexer import schema as t
from indexer.database import chunks, insert_many, text_sha

#: the stored rank of a pair people rejected: after every real rank, so no ``rank < N`` reader
#: counts it, and :meth:`TagQueries.tags` leaves it out (see query.learning)
REJECTED_RANK = 2**31 - 1
# built once: a search asks for it on every request (building the statement cost more than running it)
_LATEST_TAG_RUN = sa.select(sa.func.max(t.runs.c.id)).where(t.runs.c.kind == "tag", t.runs.c.status == "ok")


class TagQueries:
    """Tags, labels and text embeddings; mixed into :class:`indexer.catalog.Catalog`."""

    engine: Engine

    # text embeddings -------------------------------------------------------------------------
    def text_vectors(self, model_id: int, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached (D,) float32 embeddings of ``texts`` made with this model (those that are cached)."""
        keys = {text_sha(x): x for x in texts}
        out: dict[str, np.ndarray] = {}
        te = t.text_embeddings
        with self.engine.connect() as conn:
            for chunk in chunks(list(keys)):
                query = sa.select(te.c.text_sha256, te.c.vector).where(
                    te.c.model_id == model_id, te.c.text_sha256.in_(chunk)
                )
                out.update({keys[k]: np.frombuffer(v, dtype=np.float32) for k, v in conn.execute(query)})
        return out

    def text_vector_sample(self, model_id: int, limit: int) -> np.ndarray:
        """(n <= limit, D) float32: texts already encoded with this model (users' labels and queries)."""
        te = t.text_embeddings
        query = (
            sa.select(te.c.vector).where(te.c.model_id == model_id).order_by(te.c.text_sha256).limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [np.frombuffer(v, dtype=np.float32) for v in conn.execute(query).scalars()]
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    def add_text_vectors(self, model_id: int, vectors: dict[str, np.ndarray]) -> None:
        have = self.text_vectors(model_id, list(vectors))
        rows = [
            {
                "model_id": model_id,
                "text_sha256": text_sha(x),
                "text": x,
                "vector": np.asarray(v, dtype=np.float32).tobytes(),
            }
            for x, v in vectors.items()
            if x not in have
        ]
        for chunk in chunks(rows):
            with self.engine.begin() as conn:
                conn.execute(t.text_embeddings.insert(), list(chunk))

    # labels and tags -------------------------------------------------------------------------
    def label_ids(self, names: Sequence[str]) -> list[int]:
        with self.engine.begin() as conn:
            have = dict(
                conn.execute(
                    sa.select(t.labels.c.name, t.labels.c.id).where(t.labels.c.name.in_(names))
                ).all()
            )
            missing = [{"name": n} for n in dict.fromkeys(names) if n not in have]
            if missing:
                conn.execute(t.labels.insert(), missing)
                have = dict(
                    conn.execute(
                        sa.select(t.labels.c.name, t.labels.c.id).where(t.labels.c.name.in_(names))
                    ).all()
                )
        return [int(have[n]) for n in names]

    def add_tags(self, rows: Sequence[dict[str, Any]]) -> None:
        for chunk in chunks(rows, 5000):
            with self.engine.begin() as conn:
                insert_many(conn, t.tags, list(chunk))

    def tags(self, run_id: int | None = None, image_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Tag rows (image_id, label, score, confidence, rank, method, run_id) of one run (default: latest);
        never the pairs people rejected (rank ``REJECTED_RANK``)."""
        if run_id is None:
            run_id = self.latest_tag_run()
            if run_id is None:
                return []
        query = (
            sa.select(
                t.tags.c.image_id,
                t.labels.c.name.label("label"),
                t.tags.c.score,
                t.tags.c.confidence,
                t.tags.c.rank,
                t.tags.c.method,
                t.tags.c.run_id,
            )
            .join(t.labels, t.labels.c.id == t.tags.c.label_id)
            .where(t.tags.c.run_id == run_id, t.tags.c.rank < REJECTED_RANK)
            .order_by(t.tags.c.image_id, t.tags.c.rank)
        )
        if image_ids is not None:
            query = query.where(t.tags.c.image_id.in_([int(i) for i in image_ids]))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def delete_tags(self, run_id: int, image_ids: Sequence[int]) -> None:
        with self.engine.begin() as conn:
            for chunk in chunks([int(i) for i in image_ids]):
                conn.execute(t.tags.delete().where(t.tags.c.run_id == run_id, t.tags.c.image_id.in_(chunk)))

    def delete_tag_run(self, run_id: int) -> int:
        """Delete the tags of tag run ``run_id`` and mark it ``deleted``; returns the tag rows deleted.
        :class:`NotFound` unless it is a tag run."""
        with self.engine.begin() as conn:
            kind = conn.execute(sa.select(t.runs.c.kind).where(t.runs.c.id == run_id)).scalar()
            if kind != "tag":
                raise NotFound(f"no tag run {run_id} (see `vistag runs`)")
            deleted = conn.execute(t.tags.delete().where(t.tags.c.run_id == run_id)).rowcount
            conn.execute(
                t.runs.update().where(t.runs.c.id == run_id).values(status="deleted", finished=time.time())
            )
        return int(deleted)

    def drop_run_tags(self, run_id: int) -> int:
        """Delete every tag row of run ``run_id`` (what a dead tag run stored); returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(t.tags.delete().where(t.tags.c.run_id == run_id)).rowcount)

    def latest_tag_run(self) -> int | None:
        """The id of the newest finished tag run (the one a search shows tags of), or None."""
        with self.engine.connect() as conn:
            found = conn.execute(_LATEST_TAG_RUN).scalar()
        return int(found) if found is not None else None

    def top_tags(self, run_id: int | None, ids: Sequence[int], ranks: int) -> dict[int, list[dict[str, Any]]]:
        """image id -> its ``ranks`` best tags of tag run ``run_id``: [{label, score, confidence, rank,
        method}] best first; confidence calibrated in [0, 1], or None for runs that stored none."""
        if run_id is None or not len(ids):
            return {}
        tg = t.tags
        query = (
            sa.select(tg.c.image_id, t.labels.c.name, tg.c.score, tg.c.confidence, tg.c.rank, tg.c.method)
            .join(t.labels, t.labels.c.id == tg.c.label_id)
            .where(tg.c.run_id == run_id, tg.c.image_id.in_([int(i) for i in ids]), tg.c.rank < ranks)
            .order_by(tg.c.image_id, tg.c.rank)
        )
        out: dict[int, list[dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for image_id, label, score, confidence, rank, method in conn.execute(query):
                conf = None if confidence is None else round(float(confidence), 6)
                tag = {"label": label, "score": round(float(score), 6), "confidence": conf}
                out.setdefault(int(image_id), []).append(tag | {"rank": int(rank), "method": method})
        return out

    def label_counts(self, run_id: int | None, ranks: int) -> list[dict[str, Any]]:
        """[{label, count}], most frequent first: labels of tag run ``run_id`` among the ``ranks``
        best tags of ``count`` > 0 images."""
        if run_id is None:
            return []
        count = sa.func.count(t.tags.c.image_id)
        query = (
            sa.select(t.labels.c.name, count)
            .join(t.labels, t.labels.c.id == t.tags.c.label_id)
            .where(t.tags.c.run_id == run_id, t.tags.c.rank < ranks)
            .group_by(t.labels.c.name)
            .order_by(count.desc(), t.labels.c.name)
        )
        with self.engine.connect() as conn:
            return [{"label": name, "count": int(n)} for name, n in conn.execute(query)]

    @staticmethod
    def tagged_with(run_id: int, label: str, ranks: int) -> sa.Select:
        """The ids of images with ``label`` among their ``ranks`` best tags of run ``run_id`` (a subquery)."""
        return (
            sa.select(t.tags.c.image_id)
            .join(t.labels, t.labels.c.id == t.tags.c.label_id)
            .where(t.tags.c.run_id == run_id, t.labels.c.name == label, t.tags.c.rank < ranks)
        )
