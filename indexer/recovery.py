"""Cleaning up after runs whose process died, and the writer lock that makes it safe.

A writer (``index``, ``tag``, ``untag``) takes the home's writer lock (and the catalog database's),
then :func:`recover`s: any run still ``running`` under the lock belongs to a dead process. An index
run's complete shards are applied (so their images are not embedded again); a tag run's partial
tags and folder are deleted. :func:`apply_shards` is also how a live index run records its shards.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

from core.faults import crash_point
from core.photometa import keyword_forms, keyword_key
from indexer import check
from indexer.catalog import Catalog
from indexer.home import Home
from indexer.lock import WriterLock
from pipeline import shards
from pipeline.inputs import FileEntry

DESCRIBED = ("uri", "sha256", "size", "mtime", "width", "height", "phash", "taken", "orientation")
METADATA = ("camera", "lens", "lat", "lon", "sidecars")  # kept where the shard row read them


# dead runs --------------------------------------------------------------------------------------
def unfinished_runs(catalog: Catalog) -> list[dict[str, Any]]:
    """Index and tag runs still ``running`` or ``failed`` that recovery has not handled yet."""
    runs = [
        r
        for r in catalog.runs(limit=1000)
        if r["kind"] in ("index", "tag") and r["status"] in ("running", "failed")
    ]
    return [r for r in runs if not json.loads(r["params"]).get("recovered")]


def drop_tag_run(home: Home, catalog: Catalog, run_id: int) -> int:
    """Delete what a dead or failed tag run left: its tag rows and HOME/tagruns/run-N; returns the rows."""
    rows = catalog.drop_run_tags(run_id)
    shutil.rmtree(home.root / "tagruns" / f"run-{run_id:06d}", ignore_errors=True)
    return rows


@contextlib.contextmanager
def writer(home: Home, catalog: Catalog) -> Iterator[None]:
    """Hold the home's writer lock (and the catalog database's), after recovering what dead runs
    left; :class:`core.errors.LockHeld` when another writer holds it."""
    home.ensure()
    with WriterLock(home.lock_path), catalog.writer_lock():
        if unfinished_runs(catalog):
            recover(home, catalog)
        yield


def recover(home: Home, catalog: Catalog) -> list[int]:
    """Finish what dead or failed runs left: apply their completed shards, close them, drop
    temporary files.

    Called under the writer lock, so any run still marked ``running`` belongs to a dead process.
    The complete shards of such index runs, and of index runs that failed (disk full, database
    error...), are applied (idempotently, once), so their images are not embedded again. Such tag
    runs leave partial tags: those and the run's folder are deleted.
    """
    dead = []
    for run in unfinished_runs(catalog):
        params = json.loads(run["params"])
        folder = params.get("shards")
        if run["kind"] == "tag":
            drop_tag_run(home, catalog, run["id"])
        elif run["model_id"] is not None and folder and shards.exists(folder):
            apply_shards(home, catalog, folder, run["model_id"], run["id"], ())
        catalog.update_run_params(run["id"], {"recovered": True})
        if run["status"] == "running":
            catalog.finish_run(
                run["id"], "interrupted", {}, message="the process ended before the run finished"
            )
            dead.append(run)
    for tmp in list(home.index_root.glob("*/.tmp-*")) + list(home.index_root.glob("CURRENT.tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    return [r["id"] for r in dead]


def apply_shards(
    home: Home, catalog: Catalog, folder: str, model_id: int, run_id: int, work: Sequence[FileEntry]
) -> tuple[int, int, int]:
    """Record every shard of ``folder`` in the catalog; returns (embedded, reused, failed) counts."""
    by_uri = {e.uri: e for e in work}
    embedded = reused = failed = 0
    rel = home.relative(folder)
    for name in shards.list_shards(folder):
        shard = shards.read_shard(folder, name)
        fresh = [m for m in shard.meta if m["row"] >= 0]
        known = [m for m in shard.meta if m["row"] < 0]
        _describe_known(home, catalog, model_id, known)
        catalog.add_embeddings(
            [
                {
                    "sha256": m["sha256"],
                    "model_id": model_id,
                    "shard_dir": rel,
                    "shard": name,
                    "row": m["row"],
                    "run_id": run_id,
                }
                for m in fresh
            ]
        )
        catalog.upsert_images([_image_row(m) for m in shard.meta], run_id)
        catalog.replace_keywords(
            people_keywords(
                catalog,
                {m["uri"]: json.loads(m["keywords"]) for m in shard.meta if m.get("keywords") is not None},
            )
        )
        catalog.add_failures(shard.failures, run_id)
        catalog.upsert_images([_failed_row(f["uri"], by_uri) for f in shard.failures], run_id)
        crash_point("shard-applied")
        embedded, reused, failed = embedded + len(fresh), reused + len(known), failed + len(shard.failures)
    return embedded, reused, failed


def _describe_known(home: Home, catalog: Catalog, model_id: int, known: list[dict[str, Any]]) -> None:
    """Give the shard rows of content not decoded in this run (``row`` -1, no perceptual hash) what
    the catalog knows of it (its size, perceptual hash and date taken), else what its shards do
    (content whose catalog was rebuilt from them)."""
    missing = [m for m in known if not m.get("phash")]
    found = catalog.decoded_by_sha([m["sha256"] for m in missing])
    unsized = [m["sha256"] for m in missing if m["sha256"] not in found]
    found |= check.shard_descriptions(home, catalog, model_id, unsized)
    for m in missing:
        m.update(found.get(m["sha256"], {"width": 0, "height": 0}))


def _image_row(m: dict[str, Any]) -> dict[str, Any]:
    """The catalog row of a shard meta row; its photo metadata only where it was read (older
    shards, and rows of content not read again, leave the catalog's as they are)."""
    row = {k: m.get(k) for k in DESCRIBED} | {"status": "indexed"}
    if m.get("keywords") is not None:
        row |= {k: m.get(k) for k in METADATA}
    return row


def _failed_row(uri: str, by_uri: dict[str, FileEntry]) -> dict[str, Any]:
    entry = by_uri.get(uri)
    row: dict[str, Any] = {"uri": uri, "status": "failed", "sha256": None}
    if entry is not None:
        row |= {"size": entry.size, "mtime": entry.mtime}
    return row


def people_keywords(catalog: Catalog, by_uri: dict[str, list[str]]) -> dict[str, list[str]]:
    """``by_uri`` (image uri -> keywords read from it) without the keywords vistag itself wrote into
    its sidecars (``vistag write-xmp``): an image's existing keywords are what people gave it, and
    ``eval --truth keywords`` must never grade vistag against its own tags."""
    written = catalog.vistag_keywords(list(by_uri))
    out = {}
    for uri, words in by_uri.items():
        mine = keyword_forms(written[uri]) if uri in written else set()
        out[uri] = [w for w in words if keyword_key(w) not in mine]
    return out
