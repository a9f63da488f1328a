"""Duplicate groups: exact copies, near copies and bursts, and the member to keep.

- **exact**: identical bytes under different paths (one SHA-256), from a SQL query.
- **near**: the same picture altered (re-encoded, resized, converted, lightly edited, slightly
  cropped, rotated by EXIF). Found by perceptual hash whatever the model: contents whose 64-bit
  DCT hashes differ in at most ``near_bits`` bits; embeddings add what hashes miss (crops): a
  cosine of at least ``near_cosine`` with hashes within ``crop_bits``.
- **similar**: different shots of one moment (bursts, brackets): a cosine of at least
  ``similar_cosine`` between pictures taken within ``within_s`` of each other (date taken, else
  the file's modification time), that are not near copies of each other.

Work is per content (one node per SHA-256; its copies join its group). Candidate pairs come from
the index version's kNN graph (the one ZLaP uses, cached with the version) and from perceptual
hashes sharing one of their four 16-bit quarters (every pair within 3 bits does; one within 4 bits
nine times in ten, within 8 bits a third of the time: the graph finds the others); nothing is
compared all against all. Groups are connected components with a guard against
chaining: every member must itself pass the group's test with the group's centre (the member
with most such links), not only with a neighbour; the others form groups of their own.

The cosine thresholds default to the archive's own scale: a model that knows nothing gives every
pair a high cosine, so a threshold is never below what random pairs of this archive reach
(their 99.9th percentile, measured on a sample), and hashes carry the result then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import InputError
from core.hashes import hamming, to_uint64
from indexer.catalog import Catalog
from indexer.graph import knn_graph
from indexer.versions import IndexVersion
from query.tagging import corpus_matrix

KINDS = ("exact", "near", "similar")
KEEP_RULES = ("pixels", "format", "oldest")  # the default order of the keeper's tests
# original formats first (a camera's or phone's own file), then JPEG and TIFF, then re-saves
FORMAT_RANK = {
    ".dng": 0,
    ".cr2": 0,
    ".cr3": 0,
    ".nef": 0,
    ".arw": 0,
    ".raf": 0,
    ".orf": 0,
    ".rw2": 0,
    ".pef": 0,
    ".heic": 0,
    ".heif": 0,
    ".jpg": 1,
    ".jpeg": 1,
    ".jfif": 1,
    ".tif": 1,
    ".tiff": 1,
}
DERIVED_RANK = 2
BUCKET_MAX = 512  # hashes sharing a quarter beyond this (flat images) are not paired by it
SAMPLE_PAIRS = 20_000
INDISTINCT = 0.995  # random pairs this alike: the embeddings carry no information (a random model)
UNUSED = 2.0  # a cosine threshold no pair reaches


@dataclass(frozen=True)
class DuplicateConfig:
    """What counts as a duplicate; the cosines default (None) to the archive's scale."""

    kinds: tuple[str, ...] = KINDS
    near_bits: int = 10
    crop_bits: int = 22
    near_cosine: float | None = None
    similar_cosine: float | None = None
    within_s: float = 600.0
    keep_rule: tuple[str, ...] = KEEP_RULES

    def check(self) -> DuplicateConfig:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise InputError(
                f"unknown duplicate kind {(bad or [''])[0]!r}: choose exact, near, similar or all"
            )
        if not 0 <= self.near_bits <= 64 or not self.near_bits <= self.crop_bits <= 64:
            raise InputError("the hash distances are bits: 0 <= threshold <= crop bits <= 64")
        for value in (self.near_cosine, self.similar_cosine):
            if value is not None and not -1 <= value <= 1:
                raise InputError("cosine thresholds are from -1 to 1")
        if self.within_s < 0:
            raise InputError("the time window of similar pictures cannot be negative")
        if sorted(self.keep_rule) != sorted(KEEP_RULES):
            raise InputError(f"the keep rule orders {', '.join(KEEP_RULES)}, each once")
        return self


def make_config(
    kind: str,
    threshold: int | None,
    similarity: float | None,
    within: float | None,
    keep_rule: str | Sequence[str] | None,
) -> DuplicateConfig:
    """The :class:`DuplicateConfig` of a command's or request's options (None: the default)."""
    if kind != "all" and kind not in KINDS:
        raise InputError(f"unknown duplicate kind {kind!r}: choose exact, near, similar or all")
    rule = keep_rule.split(",") if isinstance(keep_rule, str) else keep_rule
    crop = max(22, threshold) if threshold is not None else None  # a crop's hash moves further
    values = {
        "kinds": KINDS if kind == "all" else (kind,),
        "near_bits": threshold,
        "crop_bits": crop,
        "similar_cosine": similarity,
        "within_s": within,
        "keep_rule": tuple(x.strip() for x in rule) if rule else KEEP_RULES,
    }
    return DuplicateConfig(**{k: v for k, v in values.items() if v is not None}).check()


@dataclass
class Contents:
    """One node per distinct content: ``shas`` (N,), ``hashes`` (N,) uint64 with ``hashed`` (N,)
    bool, ``xb`` (N, D) float32 unit vectors, ``when`` (N,) seconds, ``images`` sha -> rows."""

    shas: list[str]
    hashes: np.ndarray
    hashed: np.ndarray
    xb: np.ndarray
    when: np.ndarray
    images: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Edges:
    """Candidate pairs (i < j, node positions) with their hash distance (64 where unknown) and cosine."""

    i: np.ndarray
    j: np.ndarray
    bits: np.ndarray
    cosine: np.ndarray


def contents(catalog: Catalog, home: Any, version: IndexVersion) -> tuple[Contents, np.ndarray, np.ndarray]:
    """The archive's contents, with the image ids and vectors they came from (for the kNN graph)."""
    ids, xb = corpus_matrix(home, catalog, version)
    rows = {r["id"]: r for r in catalog.compared_images()}
    node_of: dict[str, int] = {}
    images: dict[str, list[dict[str, Any]]] = {}
    first: list[int] = []
    for pos, image_id in enumerate(ids.tolist()):
        row = rows.get(image_id)
        if row is None or not row["sha256"]:
            continue
        images.setdefault(row["sha256"], []).append(row)
        if row["sha256"] not in node_of:
            node_of[row["sha256"]] = len(first)
            first.append(pos)
    shas = list(node_of)
    reps = [images[s][0] for s in shas]
    hashed = np.array([bool(r["phash"]) for r in reps], dtype=bool)
    hashes = to_uint64([r["phash"] or "0" for r in reps])
    when = np.array([min(r["taken"] or r["mtime"] or 0.0 for r in images[s]) for s in shas])
    found = Contents(shas, hashes, hashed, xb[first], when, images)
    return found, ids, xb


def candidate_pairs(
    found: Contents, version: IndexVersion, ids: np.ndarray, xb: np.ndarray, config: DuplicateConfig
) -> Edges:
    """Pairs from the kNN graph and from shared hash quarters, each once, with bits and cosine;
    pairs that no test could pick (hashes farther than ``crop_bits`` apart, taken too far apart
    to be shots of one moment) are left out before any cosine is computed."""
    pairs = np.concatenate([graph_pairs(found, version, ids, xb), hash_pairs(found)])
    return measure(found, unique_pairs(pairs, len(found.shas)), config)


def graph_pairs(found: Contents, version: IndexVersion, ids: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """(P, 2) node pairs of the index version's kNN graph (the one ZLaP uses, cached with it)."""
    node = _node_positions(found, ids)
    graph = knn_graph(version, ids, xb)
    cols = graph.I.ravel()
    rows = np.repeat(np.arange(len(ids)), graph.I.shape[1])[cols >= 0]
    return np.stack([node[rows], node[cols[cols >= 0]]], axis=1)


def hash_pairs(found: Contents) -> np.ndarray:
    """(P, 2) node pairs whose perceptual hashes share a 16-bit quarter (see :func:`_quarter_pairs`)."""
    return _quarter_pairs(found.hashes[found.hashed], np.flatnonzero(found.hashed))


def unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """(Q, 2) distinct pairs (i < j) of ``pairs`` between nodes of ``n``, by sorting their codes
    ``i * n + j`` (numpy's ``unique(axis=0)`` took ten times longer at 40M pairs)."""
    pairs = pairs[(pairs[:, 0] >= 0) & (pairs[:, 1] >= 0) & (pairs[:, 0] != pairs[:, 1])]
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    codes = np.sort(lo.astype(np.int64) * n + hi)
    codes = codes[np.r_[True, codes[1:] != codes[:-1]]] if len(codes) else codes
    return np.stack([codes // n, codes % n], axis=1)


def measure(found: Contents, pairs: np.ndarray, config: DuplicateConfig, block: int = 16_384) -> Edges:
    """``pairs`` with their hash distance (64 where a hash is unknown) and cosine, without those no
    test could pick; cosines are computed a block of pairs at a time (memory stays bounded)."""
    i, j = pairs[:, 0], pairs[:, 1]
    known = found.hashed[i] & found.hashed[j]
    bits = np.where(known, hamming(found.hashes[i], found.hashes[j]), 64)
    useful = (bits <= config.crop_bits) | ~known | (np.abs(found.when[i] - found.when[j]) <= config.within_s)
    i, j, bits = i[useful], j[useful], bits[useful]
    cosine = np.empty(len(i), dtype=np.float32)
    for start in range(0, len(i), block):
        part = slice(start, start + block)
        cosine[part] = np.einsum("nd,nd->n", found.xb[i[part]], found.xb[j[part]])
    return Edges(i, j, bits, cosine)


def _node_positions(found: Contents, ids: np.ndarray) -> np.ndarray:
    """(len(ids),) node of each image position (-1 for images left out)."""
    index = {sha: n for n, sha in enumerate(found.shas)}
    by_id = {r["id"]: index[sha] for sha, rows in found.images.items() for r in rows}
    return np.array([by_id.get(i, -1) for i in ids.tolist()], dtype=np.int64)


def _quarter_pairs(hashes: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """(P, 2) node pairs whose hashes share one of their four 16-bit quarters (buckets up to
    ``BUCKET_MAX``: a bucket of flat or blank images pairs nothing)."""
    out = [np.zeros((0, 2), np.int64)]
    for q in range(4):
        keys = (hashes >> np.uint64(16 * q)) & np.uint64(0xFFFF)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if 1 < e - s <= BUCKET_MAX:
                members = nodes[order[s:e]]
                a, b = np.triu_indices(len(members), 1)
                out.append(np.stack([members[a], members[b]], axis=1))
    return np.concatenate(out)


@dataclass(frozen=True)
class Thresholds:
    """The cosines that decide: ``near`` (a crop's near copies), ``similar`` (shots of one moment),
    ``agree`` (what hash-only near copies must reach too: what random pairs of the archive reach,
    so that unrelated pictures whose hashes happen to be close are not paired; -1 when the
    model tells nothing apart and hashes decide alone). ``UNUSED`` for a test no pair passes."""

    near: float
    similar: float
    agree: float


def thresholds(found: Contents, config: DuplicateConfig, seed: int = 0) -> Thresholds:
    """The configured cosines, else 0.97 (near) and 0.90 (similar) raised to above what random pairs
    of this archive reach (their 99.9th percentile on a sample), so a model that tells pictures
    apart poorly adds no false pairs; when random pairs are as alike as copies (a model that knows
    nothing), cosines pair nothing and hashes decide alone."""
    n = len(found.shas)
    background = -1.0
    if n > 1:
        rng = np.random.default_rng(seed)
        a, b = rng.integers(0, n, (2, min(SAMPLE_PAIRS, n * (n - 1))))
        sims = np.einsum("nd,nd->n", found.xb[a[a != b]], found.xb[b[a != b]])
        background = float(np.quantile(sims, 0.999)) if len(sims) else -1.0
    informative = background <= INDISTINCT

    def above(floor: float, share: float) -> float:
        return max(floor, background + share * (1.0 - background)) if informative else UNUSED

    near = config.near_cosine if config.near_cosine is not None else above(0.97, 0.9)
    similar = config.similar_cosine if config.similar_cosine is not None else above(0.90, 0.5)
    return Thresholds(near, similar, min(background, near) if informative else -1.0)


def components(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Connected components (of 2 nodes or more) of the graph on ``n`` nodes with edges (i, j)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(i):
        return []
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for node in np.unique(np.r_[i, j]).tolist():
        groups.setdefault(int(label[node]), []).append(node)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def guarded(
    group: list[int], linked: Callable[[int, int], bool], distance: Callable[[int, int], float]
) -> list[list[int]]:
    """``group`` split so that every member passes ``linked(a, b)`` with its group's centre: the
    member nearest all others (the least sum of ``distance``), so that a chain of neighbours (a crop
    that happens to lie near another picture) does not pull strangers in."""
    out, rest = [], list(group)
    while len(rest) > 1:
        centre = min(rest, key=lambda a: sum(distance(a, b) for b in rest))
        members = [a for a in rest if a == centre or linked(a, centre)]
        if len(members) > 1:
            out.append(sorted(members))
        rest = [a for a in rest if a not in members] if len(members) > 1 else [a for a in rest if a != centre]
    return out


def group_id(kind: str, shas: Iterable[str]) -> str:
    """A stable name of a group: its kind and a digest of its contents."""
    return f"{kind}-{hashlib.sha256(','.join(sorted(shas)).encode()).hexdigest()[:10]}"


def keeper(rows: Sequence[dict[str, Any]], rule: Sequence[str]) -> tuple[dict[str, Any], str]:
    """The member to keep and why: by ``rule`` (largest pixel count, original format, oldest date)."""
    import os

    def key(row: dict[str, Any]) -> tuple:
        tests = {
            "pixels": -(row["width"] or 0) * (row["height"] or 0),
            "format": FORMAT_RANK.get(os.path.splitext(row["uri"])[1].lower(), DERIVED_RANK),
            "oldest": (row["taken"] or row["mtime"] or 0.0, row["mtime"] or 0.0),  # then the older file
        }
        return (*(tests[t] for t in rule), row["id"])

    best = min(rows, key=key)
    pixels = f"{best['width']}x{best['height']}"
    fmt = os.path.splitext(best["uri"])[1].lower().lstrip(".") or "no extension"
    reasons = {"pixels": f"most pixels ({pixels})", "format": f"original format ({fmt})", "oldest": "oldest"}
    return best, "kept by " + ", then ".join(reasons[t] for t in rule)
