"""Search filters as people write them (command options, request parameters): a label among an
image's best tags, a path or uri prefix, a range of the date taken (ISO 8601 dates and times, or
epoch seconds; an image without an EXIF date counts by its file's modification time), a camera,
a circle around a GPS position, a keyword people gave the image."""

from __future__ import annotations

import math
import os
import re
from datetime import date, datetime, timedelta, timezone

from core import uris
from core.errors import InputError
from indexer.catalog import ImageFilter

TAG_RANKS = 3  # a tag filter matches among an image's best labels of the latest tag run


def parse_time(text: str, *, end: bool = False) -> float:
    """Seconds since the epoch from epoch seconds or an ISO 8601 date or datetime.

    Without an offset, times are UTC. A date alone as an end bound means the end of that day.
    """
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value):
            raise InputError(f"not a finite time: {text!r}")
        return value
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.combine(date.fromisoformat(text), datetime.min.time(), timezone.utc)
            return (day + timedelta(days=1)).timestamp() - 1e-3 if end else day.timestamp()
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise InputError(f"not an ISO 8601 date or epoch seconds: {text[:40]!r}") from err
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def parse_near(text: str) -> tuple[float, float, float]:
    """(lat, lon, km) of ``LAT,LON,KM`` (decimal degrees, a radius in km); :class:`InputError`
    when malformed or out of range."""
    parts = text.split(",")
    try:
        lat, lon, km = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"near must be LAT,LON,KM (decimal degrees, km): {text[:40]!r}") from None
    if not all(math.isfinite(v) for v in (lat, lon, km)):
        raise InputError(f"near must be finite numbers: {text[:40]!r}")
    if abs(lat) > 90 or abs(lon) > 180:
        raise InputError(f"near: latitude must be within ±90 and longitude within ±180: {text[:40]!r}")
    if km <= 0:
        raise InputError(f"near: the radius must be more than 0 km: {text[:40]!r}")
    return lat, lon, km


def parse_filter(
    tag: str | None,
    prefix: str | None,
    since: str | None,
    until: str | None,
    tag_ranks: int = TAG_RANKS,
    *,
    camera: str | None = None,
    near: str | None = None,
    keyword: str | None = None,
) -> ImageFilter:
    """The :class:`ImageFilter` of ``tag``, ``prefix`` (a uri prefix as stored), ``since`` and
    ``until`` (a tag matches among an image's ``tag_ranks`` best labels of the latest tag run),
    ``camera`` (a substring), ``near`` (``LAT,LON,KM``) and ``keyword``."""
    lo = parse_time(since) if since else None
    hi = parse_time(until, end=True) if until else None
    if lo is not None and hi is not None and lo > hi:
        raise InputError("since is after until")
    circle = parse_near(near) if near else None
    word = " ".join((keyword or "").split()) or None
    return ImageFilter(
        tag or None,
        prefix or None,
        lo,
        hi,
        tag_ranks,
        camera.strip() or None if camera else None,
        circle,
        word,
    )


def path_prefix(text: str) -> str:
    """The uri prefix of a path a person gave: made absolute (``~`` expanded, not resolved: the
    archive stores paths as listed), with a trailing ``/`` when it names a folder, so ``2019``
    does not also match ``2019-old``; remote URIs are taken as written."""
    if uris.is_remote(text):
        return text
    path = os.path.abspath(os.path.expanduser(text))
    return path + "/" if os.path.isdir(path) and not path.endswith("/") else path
