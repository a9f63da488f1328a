"""Search filters as people write them (command options, request parameters): a label among an
image's best tags, a path or uri prefix, a range of the date taken (ISO 8601 dates and times, or
epoch seconds; an image without an EXIF date counts by its file's modification time)."""

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


def parse_filter(
    tag: str | None, prefix: str | None, since: str | None, until: str | None, tag_ranks: int = TAG_RANKS
) -> ImageFilter:
    """The :class:`ImageFilter` of ``tag``, ``prefix`` (a uri prefix as stored), ``since`` and
    ``until`` (a tag matches among an image's ``tag_ranks`` best labels of the latest tag run)."""
    lo = parse_time(since) if since else None
    hi = parse_time(until, end=True) if until else None
    if lo is not None and hi is not None and lo > hi:
        raise InputError("since is after until")
    return ImageFilter(tag or None, prefix or None, lo, hi, tag_ranks=tag_ranks)


def path_prefix(text: str) -> str:
    """The uri prefix of a path a person gave: made absolute (``~`` expanded, not resolved: the
    archive stores paths as listed), with a trailing ``/`` when it names a folder, so ``2019``
    does not also match ``2019-old``; remote URIs are taken as written."""
    if uris.is_remote(text):
        return text
    path = os.path.abspath(os.path.expanduser(text))
    return path + "/" if os.path.isdir(path) and not path.endswith("/") else path
