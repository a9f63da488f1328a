"""Search filters from request parameters: a label among an image's best tags, a uri prefix, a
modification time range (ISO 8601 dates and times, or epoch seconds)."""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timedelta, timezone

from core.errors import InputError
from indexer.catalog import ImageFilter
from vistag.http.config import HIT_TAGS


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


def parse_filter(tag: str | None, prefix: str | None, since: str | None, until: str | None) -> ImageFilter:
    """The :class:`ImageFilter` of a request's ``tag``, ``prefix``, ``since`` and ``until`` parameters
    (a tag matches among an image's :data:`HIT_TAGS` best labels of the latest tag run)."""
    lo = parse_time(since) if since else None
    hi = parse_time(until, end=True) if until else None
    if lo is not None and hi is not None and lo > hi:
        raise InputError("since is after until")
    return ImageFilter(tag or None, prefix or None, lo, hi, tag_ranks=HIT_TAGS)
