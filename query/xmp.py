"""Tags out: a tag run's confident tags written into each image's XMP sidecar, beside the image.

Per image, the tags of calibrated confidence at least ``min_confidence``, at most ``top`` of them in
the run's order (best first), go flat into ``dc:subject`` and, with their vocabulary parents
(recursively), into ``lr:hierarchicalSubject`` (``animal|cat``) and ``digiKam:TagsList``
(``animal/cat``). The catalog remembers per sidecar and field which keywords vistag wrote
(:func:`merge` says how that decides what is added and removed), so a person's keywords, and every
other property of the sidecar, are kept. Originals are never opened for writing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core import sidecars, uris
from core.errors import InputError, NotFound, SidecarError
from indexer.catalog import Catalog
from indexer.database import chunks
from query.tagruns import tag_run

WRITTEN, DECLINED = "written", "declined"
HIERARCHIES = {  # field -> its separator, and who reads it as one
    "lr:hierarchicalSubject": ("|", "Lightroom and darktable"),
    "digiKam:TagsList": ("/", "digiKam and immich"),
}
STATUSES = ("created", "updated", "unchanged", "failed", "skipped")
MAX_SIDECAR_BYTES = 16 * 2**20
CHUNK = 1000  # images whose tags and records are read at once


@dataclass(frozen=True)
class XmpConfig:
    """What ``write-xmp`` writes: images under ``paths`` (URIs or paths; none: all), tags of tag run
    ``run`` (None: the newest finished one), ``top`` per image of confidence at least
    ``min_confidence``; new sidecars named ``full`` (``photo.jpg.xmp``) or ``stem`` (``photo.xmp``)."""

    paths: tuple[str, ...] = ()
    run: int | None = None
    top: int = 5
    min_confidence: float = 0.5
    sidecar_name: str = "full"
    dry_run: bool = False

    def check(self) -> None:
        if self.top < 1:
            raise InputError(f"--top must be at least 1, got {self.top}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise InputError(f"--min-confidence must be within [0, 1], got {self.min_confidence}")
        if self.sidecar_name not in sidecars.SIDECAR_NAMES:
            raise InputError(f"--sidecar-name must be one of {', '.join(sidecars.SIDECAR_NAMES)}")


@dataclass
class XmpResult:
    """Per image (``images``): ``uri``, ``sidecar`` (URI, None when there is none to write), ``status``
    (one of :data:`STATUSES`), ``added`` and ``removed`` (field -> keywords), ``reason`` (failed or
    skipped, else None)."""

    run_id: int
    dry_run: bool
    images: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        counts = Counter(r["status"] for r in self.images)
        return {"images": len(self.images)} | {s: counts.get(s, 0) for s in STATUSES}

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "dry_run": self.dry_run, "images": self.images} | {
            "totals": self.totals(),
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class FieldChange:
    """One keyword field of one sidecar: its new ``keywords`` (file order), what was ``added`` and
    ``removed``, and the ``records`` to keep (keyword -> state)."""

    keywords: list[str]
    added: list[str]
    removed: list[str]
    records: dict[str, str]


def merge(existing: Sequence[str], records: Mapping[str, str], wanted: Sequence[str]) -> FieldChange:
    """A field's update. ``existing``: its keywords in the file; ``records``: what vistag recorded for
    it; ``wanted``: what the tag run gives now, best first.

    A keyword vistag wrote (``written``) and no longer gives is removed; one the file held before vistag
    would have written it is the person's and never removed (nor recorded); one vistag wrote that the
    person removed is ``declined`` and not written again (until the person adds it back: then it is
    theirs)."""
    present, want = set(existing), set(wanted)
    written = {k for k, s in records.items() if s == WRITTEN and k in present}
    removed = [k for k in dict.fromkeys(existing) if k in written and k not in want]
    added = [k for k in dict.fromkeys(wanted) if k not in present and k not in records]
    gone = set(removed)
    kept = {k: WRITTEN for k in written if k in want} | {k: WRITTEN for k in added}
    declined = {k: DECLINED for k in records if k not in present}
    return FieldChange([k for k in existing if k not in gone] + added, added, removed, kept | declined)


def label_paths(vocabulary: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, ...]]:
    """label -> its path from the root (``("animal", "cat")``), following ``parent`` names recursively
    (a parent need not be a label itself)."""
    parents = {str(v["name"]): v.get("parent") for v in vocabulary}
    out = {}
    for name in parents:
        chain, node = [name], parents[name]
        while node is not None and node not in chain:
            chain.append(node)
            node = parents.get(node)
        out[name] = tuple(reversed(chain))
    return out


def wanted_keywords(labels: Sequence[str], paths: Mapping[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """field -> keywords of ``labels`` (best first): flat, ``|``- and ``/``-joined paths. A path
    with a name holding a field's separator is left out of that field (see :func:`split_warnings`)."""
    full = [paths.get(label, (label,)) for label in labels]
    out: dict[str, list[str]] = {"dc:subject": list(labels)}
    for name, (sep, _) in HIERARCHIES.items():
        out[name] = [sep.join(p) for p in full if not any(sep in part for part in p)]
    return out


def split_warnings(labels: Sequence[str], paths: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One line per label whose path holds a hierarchy field's separator: such a keyword would be
    read as a tag hierarchy (``b/w`` as ``b`` > ``w``), so it is left out of that field."""
    out = []
    for label in labels:
        path = paths.get(label, (label,))
        for name, (sep, readers) in HIERARCHIES.items():
            if any(sep in part for part in path):
                out.append(
                    f"label {label!r} holds {sep!r}, which {readers} read as a tag hierarchy: "
                    f"not written to {name}"
                )
    return out


def selected_images(catalog: Catalog, paths: Sequence[str]) -> list[dict[str, Any]]:
    """The indexed images (rows, by id) that are, or lie under, one of ``paths`` (all when none);
    :class:`NotFound` when paths are given and no image matches."""
    images = catalog.images(status="indexed")
    if not paths:
        return images
    roots = [uris.normalize(str(p)) for p in paths]
    below, exact = uris.under_any(roots), set(roots)
    found = [r for r in images if r["uri"] in exact or below(r["uri"])]
    if not found:
        raise NotFound(f"no indexed image under {', '.join(map(str, paths))}")
    return found


def write_xmp(catalog: Catalog, config: XmpConfig) -> XmpResult:
    """Bring the sidecars of the selected images in line with the tag run (nothing written when
    ``dry_run``). A file that cannot be read or written is a ``failed`` entry; the run goes on."""
    config.check()
    run = tag_run(catalog, config.run)
    paths = label_paths(run["params"].get("vocabulary") or [])
    result = XmpResult(
        run["id"], config.dry_run, warnings=split_warnings(run["params"].get("labels") or [], paths)
    )
    targets = _targets(selected_images(catalog, config.paths), config.sidecar_name)
    for chunk in chunks(targets, CHUNK):
        labels = _chosen_labels(catalog, run["id"], [t["id"] for t in chunk], config)
        records = catalog.xmp_records([t["sidecar"] for t in chunk if t["sidecar"]])
        for target in chunk:
            wanted = wanted_keywords(labels.get(target["id"], []), paths)
            result.images.append(_update(catalog, target, wanted, records, run["id"], config.dry_run))
    return result


def _chosen_labels(
    catalog: Catalog, run_id: int, ids: Sequence[int], config: XmpConfig
) -> dict[int, list[str]]:
    """image id -> its labels that pass ``min_confidence``, best first, at most ``top``."""
    out: dict[int, list[str]] = {}
    for tag in catalog.tags(run_id, ids):
        chosen = out.setdefault(tag["image_id"], [])
        confident = tag["confidence"] is None or tag["confidence"] >= config.min_confidence
        if confident and len(chosen) < config.top:
            chosen.append(tag["label"])
    return out


def _targets(images: Sequence[dict[str, Any]], sidecar_name: str) -> list[dict[str, Any]]:
    """Per image: ``id``, ``uri``, ``sidecar`` (URI, or None with a ``skip`` reason), ``exists``."""
    out = []
    for image in images:
        target = {"id": image["id"], "uri": image["uri"], "sidecar": None, "exists": False}
        target |= {"skip": None, "fail": None}
        if uris.is_remote(image["uri"]):
            out.append(target | {"skip": "not a local file: sidecars are written beside local images only"})
            continue
        path, exists = sidecars.choose_sidecar(uris.to_path(image["uri"]), sidecar_name)
        out.append(target | {"sidecar": uris.from_path(path), "exists": exists})
    shared = Counter(t["sidecar"] for t in out if t["sidecar"])
    for target in out:
        if target["sidecar"] and shared[target["sidecar"]] > 1:
            others = shared[target["sidecar"]] - 1
            target["fail"] = (
                f"sidecar shared with {others} other image(s) of the same stem: use --sidecar-name full"
            )
    return out


def _update(
    catalog: Catalog,
    target: dict[str, Any],
    wanted: dict[str, list[str]],
    records: Mapping[str, Mapping[str, Mapping[str, str]]],
    run_id: int,
    dry_run: bool,
) -> dict[str, Any]:
    """Update one image's sidecar; its result entry."""
    entry = {"uri": target["uri"], "sidecar": target["sidecar"], "status": "unchanged", "added": {}}
    entry |= {"removed": {}, "reason": None}
    if target["skip"] or target["fail"]:
        status = "skipped" if target["skip"] else "failed"
        return entry | {"status": status, "reason": target["skip"] or target["fail"]}
    try:
        return _apply(catalog, target, wanted, records.get(target["sidecar"], {}), run_id, dry_run, entry)
    except SidecarError as err:
        return entry | {"status": "failed", "reason": err.reason, "added": {}, "removed": {}}
    except (OSError, ValueError) as err:
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        reason = f"{getattr(err, 'strerror', None) or err}{where}"
        return entry | {"status": "failed", "reason": reason, "added": {}, "removed": {}}


def _apply(
    catalog: Catalog,
    target: dict[str, Any],
    wanted: dict[str, list[str]],
    recorded: Mapping[str, Mapping[str, str]],
    run_id: int,
    dry_run: bool,
    entry: dict[str, Any],
) -> dict[str, Any]:
    path = uris.to_path(target["sidecar"])
    data = (
        uris.read_local(target["sidecar"], MAX_SIDECAR_BYTES) if target["exists"] else sidecars.EMPTY_PACKET
    )
    existing = sidecars.read_keywords(data)
    mine = recorded if target["exists"] else {}  # a sidecar deleted by a person starts afresh
    changes = {f: merge(existing[f], mine.get(f, {}), wanted[f]) for f in sidecars.FIELDS}
    entry |= {
        "added": {f: c.added for f, c in changes.items() if c.added},
        "removed": {f: c.removed for f, c in changes.items() if c.removed},
    }
    changed = bool(entry["added"] or entry["removed"])
    if changed:
        entry["status"] = "updated" if target["exists"] else "created"
    elif not target["exists"]:
        entry["sidecar"] = None  # nothing to write: no empty sidecar
    if dry_run:
        return entry
    if changed:
        new = sidecars.with_keywords(
            data, {f: c.keywords for f, c in changes.items() if c.added or c.removed}
        )
        real = os.path.realpath(path) if target["exists"] else path
        mode = os.stat(real).st_mode & 0o7777 if target["exists"] else None
        sidecars.replace_file(real, new, mode)
    records = {f: c.records for f, c in changes.items() if c.records}
    if records != {f: dict(r) for f, r in recorded.items() if r}:
        catalog.set_xmp_records(target["sidecar"], records, run_id)
    return entry
