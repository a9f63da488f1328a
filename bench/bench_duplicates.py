"""Duplicate finding at scale: the grouping of ``vistag duplicates`` against the kNN graph it starts from.

    python bench/bench_duplicates.py [--vectors 100000] [--dim 512] [--families N/50] [--bursts F/10]

Data: ``--vectors`` clustered unit vectors (``bench_search.clustered``, 100 clusters), one image per
content, random 64-bit perceptual hashes and dates spread over ten years, with planted
- near-copy families of 2-6 contents: the base vector and hash, and copies at a cosine of 0.97-0.995
  to the base whose hashes are the base's with 0-8 bits flipped, dated as the base;
- bursts of 3-8 shots: pairwise cosines 0.92-0.95, unrelated (random) hashes, taken within 5 minutes.

What is timed (wall seconds; no catalog or home is built, the primitives run on in-memory arrays):
- index build (reported, not in the ratio): the index the product would choose for N vectors
  (``choose_index``: Flat up to 100k, IVF-SQ8 above), built by ``build.build_from_chunks``;
- baseline, the kNN graph: ``indexer.graph.knn_graph`` on a stand-in version (exact ``faiss.knn``
  for a Flat index, the IVF search plus exact re-scoring above), including its cache write;
- the grouping, all that ``find_duplicates`` does after the graph except SQL, step by step: the
  product's own ``candidate_pairs`` steps (``graph_pairs``: the graph read back from the version's
  cache; ``hash_pairs``: hash-quarter buckets; ``unique_pairs``; ``measure``: Hamming bits and
  cosines, in blocks, of the pairs that can matter), ``thresholds``, ``dedupe._near`` and
  ``dedupe._similar`` (their ``components`` and ``guarded`` timed apart), and ``dedupe._group``
  for every group (the keeper).
Quality: pair precision and recall of the near and similar groups against the planted ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import procmem  # noqa: E402 - beside this file
from bench_search import clustered  # noqa: E402 - beside this file

from core.hashes import hamming  # noqa: E402
from query import dedupe, duplicates  # noqa: E402
from query.duplicates import Contents, DuplicateConfig, Edges  # noqa: E402

GB = 1 << 30


@dataclass
class Planted:
    """``family`` and ``burst`` (N,) int64: each node's planted group, -1 for none."""

    family: np.ndarray
    burst: np.ndarray


@dataclass
class Steps:
    """Wall seconds of named steps, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class StandIn:
    """The parts of an ``IndexVersion`` that ``knn_graph`` reads: a folder, the index and its type."""

    def __init__(self, path: Path, index: Any, index_type: str, search: dict[str, Any], rerank: int):
        self.path, self._index, self.rerank = path, index, rerank
        self.manifest = {"index_type": index_type, "search": {"params": search, "rerank": rerank}}

    def load(self) -> Any:
        return self._index


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def around(base: np.ndarray, cos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(m, d) unit vectors at cosine ``cos`` (m,) to the unit rows ``base`` (m, d)."""
    g = rng.standard_normal(base.shape).astype(np.float32)
    g = unit(g - (g * base).sum(axis=1, keepdims=True) * base)
    return (cos[:, None] * base + np.sqrt(1 - cos**2)[:, None] * g).astype(np.float32)


def flip_bits(hashes: np.ndarray, flips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``hashes`` (m,) uint64 with ``flips`` (m,) distinct random bits flipped each."""
    bits = rng.random((len(hashes), 64)).argsort(axis=1)[:, :8].astype(np.uint64)
    masks = np.where(np.arange(8) < flips[:, None], np.uint64(1) << bits, np.uint64(0))
    return hashes ^ np.bitwise_or.reduce(masks, axis=1)


def plant(
    xb: np.ndarray, families: int, bursts: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, Planted]:
    """Plant families and bursts in ``xb`` (N, d) in place; returns (hashes (N,) uint64, when (N,)
    seconds, the planted groups)."""
    n = len(xb)
    hashes = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    when = 1.3e9 + rng.random(n) * 3.15e8
    fam_sizes, burst_sizes = rng.integers(2, 7, families), rng.integers(3, 9, bursts)
    if fam_sizes.sum() + burst_sizes.sum() > n:
        raise SystemExit("too many families and bursts for --vectors")
    order = rng.permutation(n)[: fam_sizes.sum() + burst_sizes.sum()]
    fam_nodes, burst_nodes = order[: fam_sizes.sum()], order[fam_sizes.sum() :]
    planted = Planted(np.full(n, -1, np.int64), np.full(n, -1, np.int64))
    planted.family[fam_nodes] = np.repeat(np.arange(families), fam_sizes)
    planted.burst[burst_nodes] = np.repeat(np.arange(bursts), burst_sizes)
    # families: the first node is the base, the others copies of it
    starts = np.r_[0, np.cumsum(fam_sizes)[:-1]]
    base = np.repeat(fam_nodes[starts], fam_sizes)
    copy = np.ones(len(fam_nodes), bool)
    copy[starts] = False
    src, dst = base[copy], fam_nodes[copy]
    xb[dst] = around(xb[src], rng.uniform(0.97, 0.995, len(dst)).astype(np.float32), rng)
    hashes[dst] = flip_bits(hashes[src], rng.integers(0, 9, len(dst)), rng)
    when[dst] = when[src]
    # bursts: every shot at cosine sqrt(c) to a common base, so shots are at about c to each other
    starts = np.r_[0, np.cumsum(burst_sizes)[:-1]]
    base = np.repeat(burst_nodes[starts], burst_sizes)
    c = np.repeat(rng.uniform(0.92, 0.95, bursts), burst_sizes).astype(np.float32)
    xb[burst_nodes] = around(xb[base].copy(), np.sqrt(c), rng)
    when[burst_nodes] = when[base] + rng.uniform(0, 300, len(burst_nodes))
    return hashes, when, planted


def contents_of(xb: np.ndarray, hashes: np.ndarray, when: np.ndarray) -> tuple[Contents, np.ndarray]:
    """The :class:`Contents` of one image per content (ids 1..N) and the image ids, as
    ``duplicates.contents`` makes them from a catalog."""
    ids = np.arange(1, len(xb) + 1, dtype=np.int64)
    shas = [f"{i:064x}" for i in range(len(xb))]
    hexes = [f"{h:016x}" for h in hashes.tolist()]
    images = {
        sha: [
            {
                "id": i + 1,
                "uri": f"/archive/{i:07d}.jpg",
                "width": 640,
                "height": 480,
                "size": 1,
                "taken": t,
                "mtime": t,
                "sha256": sha,
                "phash": h,
            }
        ]
        for i, (sha, h, t) in enumerate(zip(shas, hexes, when.tolist(), strict=True))
    }
    return Contents(shas, hashes.copy(), np.ones(len(xb), bool), xb, when, images), ids


def build_version(folder: Path, xb: np.ndarray, ids: np.ndarray) -> tuple[StandIn, str, float]:
    """The index the product chooses for ``xb``, built as ``vistag index`` builds it; (version
    stand-in, factory string, seconds)."""
    from indexer.build import build_from_chunks
    from indexer.choice import choose_index, set_search_params

    choice = choose_index(len(xb), xb.shape[1], storage="memory")
    rng = np.random.default_rng(1)
    start = time.perf_counter()

    def sample() -> np.ndarray:
        return xb[np.sort(rng.choice(len(xb), min(len(xb), max(choice.train_size, 1)), replace=False))]

    chunks = ((ids[s : s + 100_000], xb[s : s + 100_000]) for s in range(0, len(xb), 100_000))
    index = build_from_chunks(xb.shape[1], choice, sample, chunks)
    set_search_params(index, choice.search)
    seconds = time.perf_counter() - start
    return StandIn(folder, index, choice.factory, choice.search, choice.rerank), choice.factory, seconds


def pair_steps(
    found: Contents, version: StandIn, ids: np.ndarray, xb: np.ndarray, config: DuplicateConfig, steps: Steps
) -> tuple[Edges, dict[str, int]]:
    """``duplicates.candidate_pairs``, its product steps timed one by one; the edges and pair counts."""
    with steps("graph pairs (cached graph)"):
        graph = duplicates.graph_pairs(found, version, ids, xb)
    with steps("hash-quarter bucket pairs"):
        quarter = duplicates.hash_pairs(found)
    with steps("unique pairs"):
        pairs = duplicates.unique_pairs(np.concatenate([graph, quarter]), len(found.shas))
    with steps("bits, cosines of the useful pairs"):
        edges = duplicates.measure(found, pairs, config)
    return edges, {
        "graph": len(graph),
        "quarter": len(quarter),
        "unique": len(pairs),
        "measured": len(edges.i),
    }


@contextlib.contextmanager
def timed_primitives(steps: Steps, label: str) -> Iterator[None]:
    """Time a ``dedupe`` step, with its ``components`` and ``guarded`` calls apart from the rest."""
    originals = dedupe.components, dedupe.guarded
    inner = [f"{label}: components", f"{label}: chaining guard"]
    steps.seconds[f"{label}: classify (vectorised)"] = 0.0

    def components(*args: Any) -> Any:
        with steps(inner[0]):
            return originals[0](*args)

    def guarded(*args: Any) -> Any:
        with steps(inner[1]):
            return originals[1](*args)

    dedupe.components, dedupe.guarded = components, guarded
    start = time.perf_counter()
    try:
        yield
    finally:
        dedupe.components, dedupe.guarded = originals
        rest = time.perf_counter() - start - sum(steps.seconds.get(k, 0.0) for k in inner)
        steps.seconds[f"{label}: classify (vectorised)"] = rest


def classify(
    found: Contents, edges: Edges, config: DuplicateConfig, steps: Steps
) -> tuple[list[list[int]], list[list[int]], duplicates.Thresholds]:
    """(near groups, similar groups, thresholds) as ``find_duplicates`` finds them."""
    with steps("thresholds"):
        limits = duplicates.thresholds(found, config)
    with timed_primitives(steps, "near"):
        near = dedupe._near(found, edges, config, limits)
    same = {n: k for k, g in enumerate(near) for n in g}
    with timed_primitives(steps, "similar"):
        similar = dedupe._similar(found, edges, config, limits, same)
    with steps("listing (keeper of each group)"):
        for kind, groups in (("near", near), ("similar", similar)):
            for g in groups:
                dedupe._group(kind, [found.shas[n] for n in g], found, config)
    return near, similar, limits


def pair_codes(groups: list[np.ndarray] | list[list[int]], n: int) -> np.ndarray:
    """Sorted unique codes ``a * n + b`` (a < b) of the pairs within each group."""
    codes = [np.zeros(0, np.int64)]
    for g in groups:
        g = np.sort(np.asarray(g, np.int64))
        a, b = np.triu_indices(len(g), 1)
        codes.append(g[a] * n + g[b])
    return np.unique(np.concatenate(codes))


def planted_groups(labels: np.ndarray) -> list[np.ndarray]:
    nodes = np.flatnonzero(labels >= 0)
    order = nodes[np.argsort(labels[nodes], kind="stable")]
    return np.split(order, np.flatnonzero(np.diff(labels[order])) + 1) if len(order) else []


def quality(found: list[list[int]], labels: np.ndarray, n: int) -> tuple[float, float, int, int, np.ndarray]:
    """(precision, recall, found pairs, planted pairs, codes of the found pairs not planted)."""
    got, truth = pair_codes(found, n), pair_codes(planted_groups(labels), n)
    hit = np.isin(got, truth).sum()
    return hit / max(len(got), 1), hit / max(len(truth), 1), len(got), len(truth), got[~np.isin(got, truth)]


def report_quality(
    found: Contents,
    near: list[list[int]],
    similar: list[list[int]],
    planted: Planted,
    config: DuplicateConfig,
) -> None:
    n = len(found.shas)
    for kind, groups, labels in (("near", near, planted.family), ("similar", similar, planted.burst)):
        precision, recall, got, truth, false = quality(groups, labels, n)
        line = f"{kind:8s}: pair precision {precision:.4f}  recall {recall:.4f}  ({got} pairs found, {truth} planted"
        if kind == "near" and len(false):
            a, b = false // n, false % n
            by_hash = int((hamming(found.hashes[a], found.hashes[b]) <= config.near_bits).sum())
            line += (
                f"; {len(false)} not planted, {by_hash} of them random hashes within {config.near_bits} bits"
            )
        print(line + ")")
    p = sum(comb(64, k) for k in range(config.near_bits + 1)) / 2.0**64
    print(
        f"          expected random 64-bit hash pairs within {config.near_bits} bits: {n * (n - 1) / 2 * p:.1f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--families", type=int, default=None, help="near-copy families (default vectors / 50)")
    ap.add_argument("--bursts", type=int, default=None, help="bursts (default families / 10)")
    args = ap.parse_args()
    families = args.families if args.families is not None else args.vectors // 50
    bursts = args.bursts if args.bursts is not None else families // 10
    rng = np.random.default_rng(0)
    xb = clustered(args.vectors, args.dim, 100, rng)
    hashes, when, planted = plant(xb, families, bursts, rng)
    found, ids = contents_of(xb, hashes, when)
    config = DuplicateConfig()
    steps = Steps()
    with tempfile.TemporaryDirectory() as tmp:
        version, factory, build_s = build_version(Path(tmp), xb, ids)
        start = time.perf_counter()
        duplicates.knn_graph(version, ids, xb)
        graph_s = time.perf_counter() - start
        edges, counts = pair_steps(found, version, ids, xb, config, steps)
        near, similar, limits = classify(found, edges, config, steps)
    members = int((planted.family >= 0).sum()), int((planted.burst >= 0).sum())
    print(
        f"{args.vectors} vectors x {args.dim}-d (100 clusters), {families} families ({members[0]} contents), "
        f"{bursts} bursts ({members[1]} shots)"
    )
    print(f"index build (not in the ratio)       : {build_s:8.2f} s  {factory}")
    print(
        f"baseline: kNN graph (k=10)           : {graph_s:8.2f} s  ({'exact faiss.knn' if factory == 'Flat' else factory + ' search + exact re-score'})"
    )
    print("grouping:")
    for name, secs in steps.seconds.items():
        print(f"  {name:35s}: {secs:8.2f} s")
    total = sum(steps.seconds.values())
    print(f"grouping total                       : {total:8.2f} s")
    print(f"ratio grouping / graph               : {total / graph_s:8.3f}")
    print(
        f"pairs: {counts['graph']} graph (directed), {counts['quarter']} hash-quarter, {counts['unique']} unique, "
        f"{counts['measured']} measured; "
        f"{len(near)} near groups, {len(similar)} similar groups"
    )
    print(
        f"thresholds: near cosine {limits.near:.4f}, similar cosine {limits.similar:.4f}, "
        f"hash-near agree cosine {limits.agree:.4f}"
    )
    report_quality(found, near, similar, planted, config)
    print(f"peak RSS {procmem.status('VmHWM') / (1 << 20):.2f} GB")


if __name__ == "__main__":
    main()
