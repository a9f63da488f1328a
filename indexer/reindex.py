"""Plan, then execute: compare a listing with the catalog and freeze what a run must do.

Files whose size and mtime match the catalog are unchanged; others are new or changed and go to
the pipeline, which hashes them (content already embedded for this model is reused, not
embedded again). Catalog images below a listed folder that are no longer there are deleted.
Unchanged images without an embedding for the run's model (a model switch) are work too, and so
are those whose XMP sidecar changed since their metadata was read (read again, not re-embedded).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from core import uris
from core.photometa import sidecar_state
from pipeline.inputs import FileEntry, Listing

LIVE = ("indexed", "failed")


@dataclass(frozen=True)
class ReindexPlan:
    """What one index run will do; printable and testable before anything is built."""

    new: tuple[FileEntry, ...]
    changed: tuple[FileEntry, ...]
    reembed: tuple[FileEntry, ...]
    unchanged: tuple[str, ...]
    deleted: tuple[str, ...]
    missing: tuple[tuple[str, str], ...]
    refresh: tuple[FileEntry, ...] = ()  # unchanged, read again for what the catalog keeps of them

    @property
    def work(self) -> tuple[FileEntry, ...]:
        """Files the pipeline must read (new, changed, those lacking this model's embedding, and
        those whose description is refreshed)."""
        return self.new + self.changed + self.reembed + self.refresh

    @property
    def is_noop(self) -> bool:
        return not (self.work or self.deleted or self.missing)

    def counts(self) -> dict[str, int]:
        return {
            "listed": len(self.new)
            + len(self.changed)
            + len(self.reembed)
            + len(self.unchanged)
            + len(self.refresh),
            "new": len(self.new),
            "changed": len(self.changed),
            "reembed": len(self.reembed),
            "unchanged": len(self.unchanged),
            "refresh": len(self.refresh),
            "deleted": len(self.deleted),
            "missing": len(self.missing),
        }

    def describe(self) -> str:
        c = self.counts()
        lines = [
            f"plan: {c['listed']} listed, {c['new']} new, {c['changed']} changed, "
            f"{c['reembed']} to re-embed for this model, {c['unchanged']} unchanged, "
            f"{c['refresh']} to describe again, {c['deleted']} deleted, {c['missing']} unreadable in manifests"
        ]
        lines += [f"  new      {e.uri}" for e in self.new]
        lines += [f"  changed  {e.uri}" for e in self.changed]
        lines += [f"  re-embed {e.uri}" for e in self.reembed]
        lines += [f"  refresh  {e.uri}" for e in self.refresh]
        lines += [f"  deleted  {u}" for u in self.deleted]
        return "\n".join(lines)


def plan_reindex(
    listing: Listing,
    states: Mapping[str, Mapping[str, Any]],
    known: Collection[str],
    refresh: bool | str = False,
) -> ReindexPlan:
    """Compare ``listing`` with catalog ``states`` (uri -> id, sha256, size, mtime, status, phash,
    sidecars).

    ``known`` holds the sha256 of content already embedded with the run's model. ``refresh``:
    unchanged indexed images the catalog does not describe yet (no perceptual hash or photo
    metadata: indexed by an older vistag) are read again for it, without being embedded again;
    ``refresh="all"``: every unchanged indexed image is. Unchanged images whose sidecars changed
    since their metadata was read are read again too.
    """
    new, changed, reembed, unchanged, again = [], [], [], [], []
    for entry in listing.entries:
        state = states.get(entry.uri)
        if state is None or state["status"] not in LIVE:
            new.append(entry)
        elif state["size"] != entry.size or abs((state["mtime"] or 0.0) - entry.mtime) > 1e-6:
            changed.append(entry)
        elif state["status"] == "indexed" and state["sha256"] not in known:
            reembed.append(entry)
        elif state["status"] == "indexed" and _undescribed(entry.uri, state, refresh, listing.may_exist):
            again.append(entry)
        else:
            unchanged.append(entry.uri)
    listed = {e.uri for e in listing.entries}
    below = uris.under_any(listing.roots)
    deleted = sorted(
        uri for uri, state in states.items() if state["status"] in LIVE and uri not in listed and below(uri)
    )
    return ReindexPlan(
        tuple(new),
        tuple(changed),
        tuple(reembed),
        tuple(unchanged),
        tuple(deleted),
        listing.missing,
        tuple(again),
    )


def _undescribed(
    uri: str, state: Mapping[str, Any], refresh: bool | str, may_exist: Callable[[str], bool] | None = None
) -> bool:
    """Whether an unchanged indexed image must be read again for its description: never described
    (with ``refresh``), any (with ``refresh="all"``), or its sidecars changed since it was read."""
    if refresh == "all":
        return True
    read = state.get("sidecars")
    if read is None:
        return refresh
    return (refresh and not state.get("phash")) or sidecar_state(uri, may_exist) != read
