"""Integrity of a home: find damaged state, repair it from what is intact, clean up after dead runs.

- :func:`check_home` (``vistag check``): hashes every file of every index version, every shard
  the catalog or a version's vector table points into, and compares the catalog's identity with
  the published version's; returns what is damaged and how to repair it.
- :func:`repair` (start of every ``vistag index``, under the writer lock): forgets the
  embeddings of damaged shards (the planner then embeds exactly those images again), removes
  damaged unpublished versions, and, when the catalog holds no embedding of the run's model,
  takes them from the home's shards (a deleted or replaced catalog: only hashing happens).
- :func:`catalog_problem`: whether the catalog is the one the published index was built from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from core.errors import CatalogMismatch, DamagedState, IndexNotFound, ModelMismatch
from core.models import ModelIdentity
from indexer import versions
from indexer.catalog import Catalog
from indexer.home import Home
from pipeline import shards

log = logging.getLogger(__name__)

ADOPT_REPAIR = "`vistag index PATH` rebuilds the catalog from the home's shards without re-embedding"
RUN_FOLDER = re.compile(r"run-\d+")
UNCHECKED = "written before checksums were recorded; only checked to be readable"


# the catalog's identity ------------------------------------------------------------------------
def catalog_problem(home: Home, catalog: Catalog, version: versions.IndexVersion | None = None) -> str | None:
    """Why ``catalog`` is not the one the published ``version`` (default: the current one) was
    built from (another catalog id, or no indexed image beside a version holding some), and how
    to repair it; None when it is (or nothing is published)."""
    problem = _mismatch(home, catalog, version)
    return f"{problem}: {ADOPT_REPAIR}" if problem else None


def _mismatch(home: Home, catalog: Catalog, version: versions.IndexVersion | None) -> str | None:
    if version is None:
        try:
            version = versions.current_version(home)
        except (IndexNotFound, DamagedState, ModelMismatch):
            return None
    built_from = version.manifest.get("catalog_id")
    if built_from:  # versions written before catalogs had an id: only an empty catalog is told apart
        if built_from == catalog.catalog_id():
            return None
        why = "another catalog"
    elif int(version.manifest.get("count", 0)) > 0 and not catalog.has_indexed_images():
        why = "the catalog holds no indexed image"
    else:
        return None
    url = Catalog.display_url(catalog.url)
    return f"catalog {url} is not the one index {version.name} was built from ({why})"


def require_catalog(home: Home, catalog: Catalog) -> None:
    """Raise :class:`CatalogMismatch` when :func:`catalog_problem` finds one."""
    problem = catalog_problem(home, catalog)
    if problem:
        raise CatalogMismatch(problem)


# repair at the start of an index run ------------------------------------------------------------
def repair(home: Home, catalog: Catalog, identity: ModelIdentity, model_id: int) -> dict[str, int]:
    """Repair what the next build would trip on; returns counts (``shards_dropped``,
    ``embeddings_dropped``, ``versions_removed``, ``embeddings_adopted``)."""
    dropped = drop_damaged_shards(home, catalog)
    removed = remove_damaged_unpublished(home)
    adopted = adopt_shards(home, catalog, identity, model_id)
    return {
        "shards_dropped": len(dropped),
        "embeddings_dropped": sum(dropped.values()),
        "versions_removed": removed,
        "embeddings_adopted": adopted,
    }


def drop_damaged_shards(home: Home, catalog: Catalog) -> dict[str, int]:
    """Forget the embeddings of every shard the catalog points into that is damaged or gone
    (hashed unless its stamp vouches for it; remote shards by size); returns shard -> rows dropped."""
    dropped: dict[str, int] = {}
    for shard_dir, shard, _ in catalog.embedding_shards():
        try:
            shards.verify_shard(home.absolute(shard_dir), shard)
        except DamagedState as err:
            dropped[f"{shard_dir}/{shard}"] = catalog.drop_shard_embeddings(shard_dir, shard)
            log.warning(
                "%s: its %d embeddings are dropped and made again", err, dropped[f"{shard_dir}/{shard}"]
            )
    return dropped


def remove_damaged_unpublished(home: Home) -> int:
    """Delete damaged version folders that are not published (checksummed ones); returns how many."""
    try:
        current = versions.current_version_path(home)
    except DamagedState:
        current = None
    removed = 0
    for folder in sorted(home.index_root.glob("*/v[0-9]*")):
        if current is not None and folder.resolve() == current.resolve():
            continue
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            if manifest.get("files"):
                versions.IndexVersion(folder, manifest).verify()
        except (OSError, ValueError, AttributeError, DamagedState) as err:
            log.warning("unpublished index version %s is damaged (%s): removed", folder, err)
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def adopt_shards(home: Home, catalog: Catalog, identity: ModelIdentity, model_id: int) -> int:
    """When the catalog holds no embedding of ``identity``'s model, record those of the intact
    shards under HOME/shards/<model key>/ (sha256 -> shard, row), so their images are hashed,
    not embedded again. Folders named ``run-N`` are renamed first: a new catalog numbers its
    runs from 1 again and would write into them. Returns the embeddings recorded."""
    root = home.root / "shards" / identity.key
    if catalog.has_embeddings(model_id) or not root.is_dir():
        return 0
    rows: list[dict[str, Any]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if RUN_FOLDER.fullmatch(folder.name):
            folder = _set_aside(folder)
        rel = home.relative(folder)
        for name in shards.list_shards(str(folder)):
            try:
                shard = shards.read_shard(str(folder), name)
            except DamagedState as err:
                log.warning("%s: not adopted", err)
                continue
            if (shard.manifest.get("model") or {}).get("key") == identity.key:
                rows += [
                    {
                        "sha256": m["sha256"],
                        "model_id": model_id,
                        "shard_dir": rel,
                        "shard": name,
                        "row": m["row"],
                        "run_id": None,
                    }
                    for m in shard.meta
                    if m["row"] >= 0
                ]
    added = catalog.add_embeddings(rows)
    if added:
        log.warning(
            "the catalog had no embeddings of %s: %d taken from the home's shards", identity.model, added
        )
    return added


def _set_aside(folder: Path) -> Path:
    target = folder.with_name(f"{folder.name}-adopted-{uuid.uuid4().hex[:8]}")
    os.rename(folder, target)
    return target


def shard_descriptions(
    home: Home, catalog: Catalog, model_id: int, shas: list[str]
) -> dict[str, dict[str, Any]]:
    """sha256 -> ``width``, ``height``, ``phash``, ``taken`` read from the shards holding these
    embeddings (for content no catalog image has been decoded for, e.g. after :func:`adopt_shards`;
    shards written before perceptual hashes give None for them); unreadable ones are left out."""
    if not shas:
        return {}
    by_shard: dict[tuple[str, str], set[str]] = {}
    for sha, where in catalog.embedding_sources(model_id, shas).items():
        by_shard.setdefault(where, set()).add(sha)
    found: dict[str, dict[str, Any]] = {}
    for (shard_dir, shard), wanted in by_shard.items():
        try:
            meta = shards.read_meta(home.absolute(shard_dir), shard)
        except DamagedState:
            continue
        for m in meta:
            if m["sha256"] in wanted and m["width"]:
                found[m["sha256"]] = {k: m.get(k) for k in ("width", "height", "phash", "taken")}
    return found


def still_serves(version: versions.IndexVersion, catalog: Catalog) -> bool:
    """Whether a published version may stay published: built from this catalog (when the version
    records it) and intact (see :func:`version_damage`)."""
    if version.manifest.get("catalog_id") not in (None, "", catalog.catalog_id()):
        return False
    damage = version_damage(version)
    if damage:
        log.warning("%s", damage)
    return damage is None


def version_damage(version: versions.IndexVersion) -> str | None:
    """Why the version cannot be served (its files differ from their checksums, or, written
    before checksums, its index cannot be read), or None."""
    try:
        if version.manifest.get("files"):
            version.verify()
        else:
            version.load(mmap=True)
    except DamagedState as err:
        return str(err)
    return None


# vistag check -----------------------------------------------------------------------------------
class _Report:
    def __init__(self, home: Home):
        self.home = home
        self.damaged: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.counts = {"versions": 0, "shards": 0, "files": 0, "bytes": 0}

    def bad(self, kind: str, path: str | Path, problem: str, repair: str) -> None:
        for hint in (versions.VERSION_REPAIR, shards.SHARD_REPAIR):  # said once, in ``repair``
            problem = problem.removesuffix(f"; {hint}")
        where = self.home.relative(str(path))
        self.damaged.append({"kind": kind, "path": where, "problem": problem, "repair": repair})


def check_home(home: Home, catalog: Catalog) -> dict[str, Any]:
    """Verify a home whole: every file of every index version (the published one, the previous
    one), every shard the catalog or a version's vector table points into, and the catalog's
    identity. Returns ``{"ok", "damaged": [{kind, path, problem, repair}], "notes", "checked":
    {versions, shards, files, bytes}, "seconds"}``."""
    start = time.perf_counter()
    report = _Report(home)
    current = _published(home, report)
    counts = {(d, s): n for d, s, n in catalog.embedding_shards()}
    wanted = dict.fromkeys(counts)
    for folder in sorted(home.index_root.glob("*/v[0-9]*")):
        is_current = current is not None and folder.resolve() == current.resolve()
        wanted |= dict.fromkeys(_check_version(folder, is_current, report))
    for shard_dir, shard in wanted:
        _check_shard(home, shard_dir, shard, counts.get((shard_dir, shard)), report)
    if current is not None and (problem := _mismatch(home, catalog, None)):
        report.bad("catalog", Catalog.display_url(catalog.url), problem, ADOPT_REPAIR)
    return {
        "ok": not report.damaged,
        "damaged": report.damaged,
        "notes": report.notes,
        "checked": report.counts,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _published(home: Home, report: _Report) -> Path | None:
    try:
        return versions.current_version_path(home)
    except DamagedState as err:
        report.bad(
            "pointer", home.current_pointer, str(err), "`vistag index PATH` rebuilds and publishes a version"
        )
        return None


def _check_version(folder: Path, is_current: bool, report: _Report) -> list[tuple[str, str]]:
    """Hash every file of one version folder; returns the shards its vector table names."""
    repair = versions.VERSION_REPAIR if is_current else "it is not served: `vistag index PATH` removes it"
    kind = "index" if is_current else "unpublished index"
    report.counts["versions"] += 1
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        version = versions.IndexVersion(folder, manifest)
        files = manifest.get("files") or {}
        if files:
            report.counts["bytes"] += version.verify(full=True)
            report.counts["files"] += len(files)
        else:
            report.notes.append(f"{report.home.relative(str(folder))}: {UNCHECKED}")
            version.load(mmap=True)
        names = folder / versions.VectorTable.NAMES
        return [(str(a), str(b)) for a, b in json.loads(names.read_text())] if names.exists() else []
    except (OSError, ValueError, TypeError, AttributeError, DamagedState) as err:
        report.bad(kind, folder, str(err), repair)
        return []


def _check_shard(home: Home, shard_dir: str, shard: str, images: int | None, report: _Report) -> None:
    folder = home.absolute(shard_dir)
    report.counts["shards"] += 1
    held = f"the {images} images whose vectors it held" if images else "the images whose vectors it held"
    try:
        manifest, hashed = shards.verify_shard(folder, shard, full=True)
        if not manifest.get("files"):
            shards.read_shard(folder, shard)  # written before checksums: at least readable and consistent
            report.notes.append(f"{shard_dir}/{shard}: {UNCHECKED}")
        report.counts["bytes"] += hashed
        report.counts["files"] += len(manifest.get("files") or {})
    except DamagedState as err:
        report.bad("shard", shards.join(folder, shard), str(err), f"`vistag index PATH` re-embeds {held}")
