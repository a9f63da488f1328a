"""Duplicate review over HTTP: the listing of :meth:`vistag.api.Archive.duplicates`, computed in a
request thread with the service's own searcher (no second copy of the index) and cached while the
archive stays the same, and decisions recorded under the home's writer lock.

A cached listing is valid while the published index version and the number of decisions are the
same (an index run publishes a new version, even one that only refreshes metadata; decisions are
never deleted, so their count tells a new one, recorded here or by the command line). Moving files (``move_to``) is
left to the command line: the HTTP API only records decisions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from core.errors import InputError
from indexer.catalog import Catalog
from indexer.home import Home
from query.search import Searcher
from vistag.http.thumbnails import thumbnail_url

CACHED_LISTINGS = 8  # (kind, threshold) listings kept for the current state of the archive
Mark = tuple[str, int]


class ListingCache:
    """Listings by key, all dropped when the archive's :data:`Mark` changes; one computed at a time
    (concurrent requests for the same listing wait for the first instead of computing it again)."""

    def __init__(self, size: int = CACHED_LISTINGS):
        self.size = size
        self._lock = threading.Lock()
        self._mark: Mark | None = None
        self._entries: OrderedDict[tuple[str, int | None], dict[str, Any]] = OrderedDict()

    def get(
        self, mark: Mark, key: tuple[str, int | None], compute: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """The listing of ``key`` for the archive at ``mark`` (read before computing: what is
        computed after it is at least as new), computed once."""
        with self._lock:
            if mark != self._mark:
                self._entries.clear()
                self._mark = mark
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            listing = compute()
            self._entries[key] = listing
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return listing


class DuplicateReview:
    """Listings and decisions of one archive (home, catalog and the service's searcher)."""

    def __init__(self, home: Home, catalog: Catalog, searcher: Searcher):
        self.home, self.catalog, self.searcher = home, catalog, searcher
        self.cache = ListingCache()

    def mark(self) -> Mark:
        """What tells one state of the archive's duplicates from the next: (index version, decisions)."""
        return self.searcher.version().name, self.catalog.duplicate_decision_count()

    def listing(self, kind: str, threshold: int | None) -> dict[str, Any]:
        """``groups``, ``thresholds``, ``unhashed`` as :meth:`vistag.api.Archive.duplicates` gives
        them, each member with its ``thumbnail`` URL. Shared: callers must not change it."""
        from query.dedupe import find_duplicates
        from query.duplicates import make_config

        config = make_config(kind, threshold, None, None, None)  # the API's own checks and defaults

        def compute() -> dict[str, Any]:
            found = find_duplicates(self.home, self.catalog, self.searcher.version(), config)
            return found | {"groups": [_with_thumbnails(g) for g in found["groups"]]}

        return self.cache.get(self.mark(), (kind, threshold), compute)

    def resolve(
        self, group: str, keep: int | None, not_duplicates: bool, threshold: int | None
    ) -> dict[str, Any]:
        """Record ``keep`` (an image id of the group) or ``not_duplicates`` about the listed group
        ``group`` (listed with ``threshold``); ``{"group": id, "decision": id}``. The caller makes
        writes one at a time."""
        from indexer import recovery
        from query.dedupe import resolve

        if (keep is None) == (not not_duplicates):
            raise InputError("send keep (an image id of the group) or not_duplicates: true, one of them")
        if not_duplicates and group.startswith("exact-"):
            raise InputError("identical files are duplicates: keep one of them")
        listing = self.listing("all", threshold)
        with recovery.writer(self.home, self.catalog):
            done = resolve(self.home, self.catalog, listing, group, keep=keep, not_duplicates=not_duplicates)
        return {"group": done["group"]["id"], "decision": done["decision"]}


def _with_thumbnails(group: dict[str, Any]) -> dict[str, Any]:
    members = [m | {"thumbnail": thumbnail_url(m["id"])} for m in group["members"]]
    return group | {"members": members}
