"""The catalog's facets (a part of :class:`indexer.catalog.Catalog`): the most common keywords and
tags of indexed images, with counts, and the range of their dates taken."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from indexer import schema as t
from indexer.catalog_meta import shown_keyword

_INDEXED = t.images.c.status == "indexed"


class FacetQueries:
    """Counts for a page's filter lists; mixed into :class:`indexer.catalog.Catalog`."""

    engine: Engine

    def facets(self, run_id: int | None, ranks: int, limit: int) -> dict[str, Any]:
        """``keywords``, ``tags`` and ``cameras``: [{value, count}] of at most ``limit`` each, most
        images first (ties by value); a tag is a label of tag run ``run_id`` among an image's ``ranks`` best (as
        the tag filter matches); ``taken``: {min, max} seconds since the epoch of the indexed images'
        dates taken (else modification times), None each without images."""
        with self.engine.connect() as conn:
            top = conn.execute(_keyword_counts(limit)).all()
            spelt = _spellings(conn, [key for key, _ in top])
            keywords = [(spelt.get(key, key), n) for key, n in top]
            cameras = _camera_counts(conn, limit)
            tags = conn.execute(_tag_counts(run_id, ranks, limit)).all() if run_id is not None else []
            low, high = conn.execute(_taken_range()).one()
        return {
            "keywords": [{"value": word, "count": int(n)} for word, n in keywords],
            "tags": [{"value": label, "count": int(n)} for label, n in tags],
            "cameras": [{"value": camera, "count": int(n)} for camera, n in cameras],
            "taken": {"min": _seconds(low), "max": _seconds(high)},
        }


def _keyword_counts(limit: int) -> sa.Select:
    """(key, images) of the ``limit`` most common keys (one entry for every spelling of a keyword:
    a click filters by it, which matches them all)."""
    k, i = t.image_keywords, t.images
    count = sa.func.count(k.c.image_id)
    return (
        sa.select(k.c.keyword, count)
        .join(i, i.c.id == k.c.image_id)
        .where(_INDEXED)
        .group_by(k.c.keyword)
        .order_by(count.desc(), k.c.keyword)
        .limit(limit)
    )


def _spellings(conn: sa.Connection, keys: list[str]) -> dict[str, str]:
    """key -> its most common spelling among indexed images (ties: the first in code point order,
    whatever the database's collation)."""
    k, i = t.image_keywords, t.images
    if not keys:
        return {}
    word = shown_keyword()
    query = (
        sa.select(k.c.keyword, word, sa.func.count())
        .join(i, i.c.id == k.c.image_id)
        .where(_INDEXED, k.c.keyword.in_(keys))
        .group_by(k.c.keyword, word)
    )
    return _most_common(conn.execute(query))


def _most_common(rows: Iterable[tuple[str, str, int]]) -> dict[str, str]:
    """key -> the spelling with the most images among ``rows`` (key, spelling, images); ties: the
    first in code point order, whatever the database's collation."""
    best: dict[str, tuple[int, str]] = {}
    for key, spelling, n in rows:
        if key not in best or (-n, spelling) < (-best[key][0], best[key][1]):
            best[key] = (int(n), spelling)
    return {key: spelling for key, (_, spelling) in best.items()}


def _camera_counts(conn: sa.Connection, limit: int) -> list[tuple[str, int]]:
    """(camera, images) of the ``limit`` most common cameras (make and model) of indexed images,
    in any case (``NIKON Z 6`` from EXIF and ``Nikon Z 6`` from a sidecar are one), each in its
    most common spelling."""
    camera = t.images.c.camera
    key, count = sa.func.lower(camera), sa.func.count()
    found = sa.select(key, count).where(_INDEXED, camera.is_not(None)).group_by(key)
    top = conn.execute(found.order_by(count.desc(), key).limit(limit)).all()
    spelt = sa.select(key, camera, count).where(_INDEXED, key.in_([k for k, _ in top])).group_by(key, camera)
    best = _most_common(conn.execute(spelt)) if top else {}
    return [(best.get(k, k), int(n)) for k, n in top]


def _tag_counts(run_id: int, ranks: int, limit: int) -> sa.Select:
    tg, i = t.tags, t.images
    count = sa.func.count(sa.distinct(tg.c.image_id))
    return (
        sa.select(t.labels.c.name, count)
        .join(t.labels, t.labels.c.id == tg.c.label_id)
        .join(i, i.c.id == tg.c.image_id)
        .where(tg.c.run_id == run_id, tg.c.rank < ranks, _INDEXED)
        .group_by(t.labels.c.name)
        .order_by(count.desc(), t.labels.c.name)
        .limit(limit)
    )


def _taken_range() -> sa.Select:
    taken = sa.func.coalesce(t.images.c.taken, t.images.c.mtime)
    return sa.select(sa.func.min(taken), sa.func.max(taken)).where(_INDEXED)


def _seconds(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
