"""The catalog's photo metadata (a part of :class:`indexer.catalog.Catalog`): each image's keywords,
and the SQL conditions of the camera, keyword and distance filters."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.photometa import keyword_key
from indexer import schema as t
from indexer.database import chunks, insert_many

EARTH_RADIUS_KM = 6371.0088  # the mean radius (IUGG)
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180
#: What a person reads of an image's row (``Catalog.details``, ``export``): its file, then its
#: photo metadata (date taken, camera, lens, position).
FILE_FIELDS = ("id", "uri", "status", "sha256", "size", "mtime", "width", "height")
PHOTO_FIELDS = ("taken", "camera", "lens", "lat", "lon")


def distance_km(lat1: float, lon1: float, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle (haversine) distances in km from (lat1, lon1) to each of the (n,) float64
    points (lat2, lon2), all in decimal degrees; (n,) float64."""
    p1, p2 = math.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    h = np.sin(dp / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def bounding_box(lat: float, lon: float, km: float) -> list[sa.ColumnElement[bool]]:
    """SQL conditions on ``images.lat``/``lon`` that every point within ``km`` of (lat, lon) meets
    (a box, wider than the circle: the exact distance is checked after, see :func:`within`)."""
    i = t.images
    dlat = km / KM_PER_DEGREE
    conds = [i.c.lat.is_not(None), i.c.lon.is_not(None), i.c.lat.between(lat - dlat, lat + dlat)]
    widest = min(90.0, abs(lat) + dlat)
    if widest >= 89.9:
        return conds  # the circle holds a pole: every longitude
    dlon = dlat / math.cos(math.radians(widest))
    if dlon >= 180:
        return conds
    lo, hi = lon - dlon, lon + dlon
    if lo < -180:  # across the antimeridian: two ranges
        return [*conds, sa.or_(i.c.lon >= lo + 360, i.c.lon <= hi)]
    if hi > 180:
        return [*conds, sa.or_(i.c.lon >= lo, i.c.lon <= hi - 360)]
    return [*conds, i.c.lon.between(lo, hi)]


def within(rows: Sequence[tuple[int, float, float]], near: tuple[float, float, float]) -> np.ndarray:
    """(n,) int64 ids of the (id, lat, lon) ``rows`` within ``near`` (lat, lon, km)."""
    if not rows:
        return np.empty(0, dtype=np.int64)
    arr = np.asarray(rows, dtype=np.float64)
    keep = distance_km(near[0], near[1], arr[:, 1], arr[:, 2]) <= near[2]
    return arr[keep, 0].astype(np.int64)


class MetaQueries:
    """Keywords of images; mixed into :class:`indexer.catalog.Catalog`."""

    engine: Engine

    def replace_keywords(self, by_uri: Mapping[str, Sequence[str]]) -> None:
        """Set the keywords of the images ``by_uri`` names (uri -> keywords as spelt), replacing
        the ones they had (one transaction per chunk of images); a repeat in another case is left
        out (the first spelling stays)."""
        k, i = t.image_keywords, t.images
        for chunk in chunks(list(by_uri)):
            with self.engine.begin() as conn:
                ids = dict(conn.execute(sa.select(i.c.uri, i.c.id).where(i.c.uri.in_(chunk))).all())
                conn.execute(k.delete().where(k.c.image_id.in_(list(ids.values()))))
                rows = [
                    {"image_id": ids[uri], "keyword": key, "display": word}
                    for uri in chunk
                    if uri in ids
                    for key, word in _spellings(by_uri[uri]).items()
                ]
                if rows:
                    insert_many(conn, k, rows)

    def keywords(self, image_id: int) -> list[str]:
        """The keywords of one image as spelt, sorted in any case."""
        k = t.image_keywords
        query = sa.select(shown_keyword()).where(k.c.image_id == image_id).order_by(k.c.keyword)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def keywords_by_image(self) -> dict[int, list[str]]:
        """Image id -> its keywords as spelt, sorted in any case, for every image that has any."""
        k = t.image_keywords
        out: dict[int, list[str]] = {}
        query = sa.select(k.c.image_id, shown_keyword()).order_by(k.c.image_id, k.c.keyword)
        with self.engine.connect() as conn:
            for image_id, word in conn.execute(query):
                out.setdefault(int(image_id), []).append(word)
        return out

    def images_with_keywords(self, words: Sequence[str]) -> dict[int, set[str]]:
        """Indexed image id -> which of ``words`` (lower-cased: :func:`keyword_key`) are among its
        keywords, for the images that have at least one of them."""
        k, i = t.image_keywords, t.images
        wanted = sorted({keyword_key(w) for w in words})
        out: dict[int, set[str]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(wanted):
                query = (
                    sa.select(k.c.image_id, k.c.keyword)
                    .join(i, i.c.id == k.c.image_id)
                    .where(i.c.status == "indexed", k.c.keyword.in_(chunk))
                )
                for image_id, word in conn.execute(query):
                    out.setdefault(int(image_id), set()).add(word)
        return out

    @staticmethod
    def metadata_conditions(camera: str | None, keyword: str | None) -> list[sa.ColumnElement[bool]]:
        """SQL conditions on ``images`` of a camera (case-insensitive substring) and a keyword."""
        i, k = t.images, t.image_keywords
        conds: list[Any] = []
        if camera is not None:  # autoescape: % and _ in the text are plain characters
            conds.append(sa.func.lower(i.c.camera).contains(camera.lower(), autoescape=True))
        if keyword is not None:
            conds.append(i.c.id.in_(sa.select(k.c.image_id).where(k.c.keyword == keyword_key(keyword))))
        return conds


def shown_keyword() -> sa.ColumnElement[str]:
    """A keyword as spelt in the image (as its lower-case key in rows from before that was kept)."""
    k = t.image_keywords
    return sa.func.coalesce(k.c.display, k.c.keyword)


def _spellings(words: Sequence[str]) -> dict[str, str]:
    """key (:func:`keyword_key`) -> the first spelling of it among ``words``."""
    out: dict[str, str] = {}
    for word in words:
        out.setdefault(keyword_key(word), word)
    return out
