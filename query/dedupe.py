"""Duplicate groups as people review them: listed largest first with the member to keep, and
decisions remembered by content (see :mod:`query.duplicates` for how groups are found).

A group resolved with ``keep`` does not come back while its contents are the same (after
re-indexing, moving files or adding copies of the same content); a group marked "not duplicates"
never pairs its contents again. Moving the members not kept (``move_to``) is the only change to
files vistag ever makes, and only when asked: nothing is deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from core import uris
from core.errors import InputError, NotFound
from core.hashes import hamming
from indexer.catalog import Catalog
from indexer.home import Home
from indexer.versions import IndexVersion
from query.duplicates import (
    UNUSED,
    Contents,
    DuplicateConfig,
    Edges,
    Thresholds,
    candidate_pairs,
    components,
    contents,
    group_id,
    guarded,
    keeper,
    thresholds,
)

SHOWN = ("id", "uri", "width", "height", "size", "taken", "mtime", "sha256", "phash")


def find_duplicates(
    home: Home, catalog: Catalog, version: IndexVersion, config: DuplicateConfig
) -> dict[str, Any]:
    """``groups`` (largest first, each ``id``, ``kind``, ``members``, ``keep``, ``why``) of the kinds
    asked for, without those people resolved; ``thresholds`` used; ``unhashed``: images without a
    perceptual hash (indexed by an older vistag: ``vistag index --refresh-metadata`` adds it)."""
    config.check()
    found, ids, xb = contents(catalog, home, version)
    decisions = catalog.duplicate_decisions()
    kept = [set(d["members"]) for d in decisions if d["kind"] == "keep"]
    groups: list[dict[str, Any]] = []
    if "exact" in config.kinds:
        for sha, members in catalog.identical_contents().items():
            groups.append(_group("exact", [sha], found, config, members))
    limits = thresholds(found, config)
    if {"near", "similar"} & set(config.kinds) and len(found.shas) > 1:
        edges = _without_refused(candidate_pairs(found, version, ids, xb, config), found, decisions)
        near_groups = _near(found, edges, config, limits)
        if "near" in config.kinds:
            groups += [_group("near", [found.shas[n] for n in g], found, config) for g in near_groups]
        if "similar" in config.kinds:
            same = {n: k for k, g in enumerate(near_groups) for n in g}
            groups += [
                _group("similar", [found.shas[n] for n in g], found, config)
                for g in _similar(found, edges, config, limits, same)
            ]
    groups = [g for g in groups if not any(set(g["contents"]) <= k for k in kept)]
    groups.sort(key=lambda g: (-len(g["members"]), g["kind"], g["id"]))
    unhashed = sum(1 for rows in found.images.values() for r in rows if not r["phash"])
    return {
        "groups": groups,
        "thresholds": {
            "near_bits": config.near_bits,
            "crop_bits": config.crop_bits,
            "near_cosine": _shown(limits.near),
            "similar_cosine": _shown(limits.similar),
            "agree_cosine": _shown(limits.agree if limits.agree > -1 else UNUSED),
            "within_s": config.within_s,
        },
        "unhashed": unhashed,
    }


def _shown(cosine: float) -> float | None:
    """A cosine threshold as reported: None when unused (a model whose cosines tell nothing apart)."""
    return None if cosine > 1.0 else round(cosine, 6)


def _without_refused(edges: Edges, found: Contents, decisions: list[dict[str, Any]]) -> Edges:
    """``edges`` without the pairs of contents people marked "not duplicates"."""
    index = {sha: n for n, sha in enumerate(found.shas)}
    marks: dict[int, set[int]] = {}  # node -> the "not duplicates" decisions naming it
    for d in decisions:
        if d["kind"] == "not_duplicates":
            for sha in d["members"]:
                if sha in index:
                    marks.setdefault(index[sha], set()).add(d["id"])
    if not marks:
        return edges
    touched = np.flatnonzero(np.isin(edges.i, list(marks)) & np.isin(edges.j, list(marks)))
    keep = np.ones(len(edges.i), dtype=bool)
    for e in touched.tolist():
        keep[e] = not marks[int(edges.i[e])] & marks[int(edges.j[e])]
    return Edges(edges.i[keep], edges.j[keep], edges.bits[keep], edges.cosine[keep])


def _is_near(bits: np.ndarray, cosine: np.ndarray, config: DuplicateConfig, limits: Thresholds) -> np.ndarray:
    """Near copies: hashes within ``near_bits`` (and a cosine that random pairs rarely reach, when
    the model tells pictures apart), or within ``crop_bits`` with a near cosine (a crop moves the
    hash); contents without a hash by the near cosine alone."""
    hashed = bits < 64
    by_hash = ((bits <= config.near_bits) & (cosine >= limits.agree)) | (
        (bits <= config.crop_bits) & (cosine >= limits.near)
    )
    return (hashed & by_hash) | (~hashed & (cosine >= limits.near))


def _pair(found: Contents, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(bits, cosine) of nodes ``a`` and ``b``, as one-element arrays."""
    known = found.hashed[a] and found.hashed[b]
    bits = hamming(found.hashes[a : a + 1], found.hashes[b : b + 1]) if known else np.array([64])
    return bits, np.array([float(found.xb[a] @ found.xb[b])])


def _near(found: Contents, edges: Edges, config: DuplicateConfig, limits: Thresholds) -> list[list[int]]:
    """Groups of near copies (see :func:`_is_near`), each member near its group's centre."""
    picked = _is_near(edges.bits, edges.cosine, config, limits)

    def near(a: int, b: int) -> bool:
        return bool(_is_near(*_pair(found, a, b), config, limits)[0])

    groups = components(len(found.shas), edges.i[picked], edges.j[picked])
    return [g for group in groups for g in guarded(group, near, lambda a, b: _distance(found, a, b))]


def _distance(found: Contents, a: int, b: int) -> float:
    """How far two contents are: hash bits where both have one (a cosine's share breaks ties),
    else from the cosine alone."""
    bits, cosine = _pair(found, a, b)
    return float(bits[0] if bits[0] < 64 else 64) + (1.0 - float(cosine[0]))


def _similar(
    found: Contents, edges: Edges, config: DuplicateConfig, limits: Thresholds, same: dict[int, int]
) -> list[list[int]]:
    """Groups of shots of one moment: a similar cosine, taken within ``within_s``, not near copies
    of each other (near copies are a group of their own)."""

    def similar(a: int, b: int) -> bool:
        bits, cosine = _pair(found, a, b)
        close = abs(found.when[a] - found.when[b]) <= config.within_s
        return bool(close and cosine[0] >= limits.similar and not _is_near(bits, cosine, config, limits)[0])

    group = np.full(len(found.shas), -1, dtype=np.int64)  # each node's near group, -1 for none
    for node, k in same.items():
        group[node] = k
    apart = (group[edges.i] < 0) | (group[edges.i] != group[edges.j])
    close = np.abs(found.when[edges.i] - found.when[edges.j]) <= config.within_s
    picked = (
        apart & close & (edges.cosine >= limits.similar) & ~_is_near(edges.bits, edges.cosine, config, limits)
    )
    groups = components(len(found.shas), edges.i[picked], edges.j[picked])
    return [
        g
        for group in groups
        for g in guarded(group, similar, lambda a, b: 1.0 - float(found.xb[a] @ found.xb[b]))
    ]


def _group(
    kind: str, shas: list[str], found: Contents, config: DuplicateConfig, only: list[int] | None = None
) -> dict[str, Any]:
    rows = [r for sha in shas for r in found.images.get(sha, [])]
    if only is not None:
        rows = [r for r in rows if r["id"] in only] or rows
    best, why = keeper(rows, config.keep_rule)
    members = [{k: r[k] for k in SHOWN} for r in sorted(rows, key=lambda r: r["id"])]
    return {
        "id": group_id(kind, shas),
        "kind": kind,
        "members": members,
        "keep": best["id"],
        "why": why,
        "contents": sorted(shas),
    }


def resolve(
    home: Home,
    catalog: Catalog,
    listing: dict[str, Any],
    target: str,
    *,
    keep: int | None = None,
    not_duplicates: bool = False,
    move_to: str | None = None,
) -> dict[str, Any]:
    """Record a decision about the group ``target`` (a group id, or the id of an image in one):
    ``keep`` (an image id of the group) or ``not_duplicates``; with ``move_to``, move the members
    not kept into that folder, keeping their paths below the archive's folders. Returns the group,
    the decision's id and the files moved (``moved``: [from, to])."""
    if (keep is None) == (not not_duplicates):
        raise InputError("say --keep ID or --not-duplicates")
    group = _find_group(listing["groups"], target)
    if not_duplicates:
        if group["kind"] == "exact":
            raise InputError("identical files are duplicates; keep one of them (--keep ID)")
        if move_to:
            raise InputError("--move-to moves the members not kept: it goes with --keep")
        decision = catalog.add_duplicate_decision("not_duplicates", dict.fromkeys(group["contents"], "pair"))
        return {"group": group, "decision": decision, "moved": []}
    chosen = next((m for m in group["members"] if m["id"] == keep), None)
    if chosen is None:
        raise InputError(f"image {keep} is not a member of {group['id']}")
    roles = {sha: "other" for sha in group["contents"]} | {chosen["sha256"]: "keep"}
    moved = _move(home, catalog, group, chosen, move_to) if move_to else []
    decision = catalog.add_duplicate_decision("keep", roles)
    return {"group": group, "decision": decision, "moved": moved}


def _find_group(groups: list[dict[str, Any]], target: str) -> dict[str, Any]:
    for group in groups:
        if group["id"] == target:
            return group
    if str(target).isdigit():
        for group in groups:  # an image of several groups: its near group first, then similar, exact
            if any(m["id"] == int(target) for m in group["members"]):
                return group
    raise NotFound(f"no duplicate group {target!r} (see `vistag duplicates`; resolved groups are not listed)")


def _move(
    home: Home, catalog: Catalog, group: dict[str, Any], chosen: dict[str, Any], move_to: str
) -> list[list[str]]:
    """Move the group's members other than ``chosen`` below ``move_to``, at their path relative to
    the archive folder they were indexed from; refuses to overwrite anything."""
    target_root = Path(move_to).expanduser().resolve()
    roots = _indexed_roots(catalog)
    plan = []
    for member in group["members"]:
        if member["id"] == chosen["id"] or uris.is_remote(member["uri"]):
            continue
        source = Path(uris.to_path(member["uri"]))
        below = next((source.relative_to(r) for r in roots if source.is_relative_to(r)), None)
        destination = target_root / (below if below is not None else source.relative_to(source.anchor))
        if destination.exists():
            raise InputError(f"{destination} exists already: nothing was moved")
        plan.append((source, destination))
    moved = []
    for source, destination in plan:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(os.fspath(source), os.fspath(destination))
        moved.append([str(source), str(destination)])
    return moved


def _indexed_roots(catalog: Catalog) -> list[Path]:
    """The local folders index runs were given, longest first."""
    import json

    roots = set()
    for run in catalog.runs(limit=1000):
        if run["kind"] == "index":
            for item in json.loads(run["params"] or "{}").get("inputs", []):
                path = Path(uris.to_path(item)).expanduser() if not uris.is_remote(item) else None
                if path is not None and path.is_dir():
                    roots.add(path.resolve())
    return sorted(roots, key=lambda p: -len(p.parts))
