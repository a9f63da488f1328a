"""Choose a FAISS index for a corpus, then tune its search so that text queries keep recall.

The choice (printable, unit-tested, made before anything is built), from the vector count ``n``,
the dimension ``d`` and an optional memory budget:

- ``Flat`` (exact) up to ``EXACT_MAX`` vectors when the full vectors fit the budget; with a
  latency target instead, exact whenever one query's exact search is estimated to take at most
  the target (its cost per vector measured on this machine, see :func:`exact_ms_per_vector`), so
  a generous target keeps millions of vectors exact and a tight one goes approximate sooner;
- ``IVF<nlist>,SQ8`` above that: 8-bit scalar codes (d bytes a vector, a quarter of Flat). On
  clustered 512-d data with text-like queries (offset from the image clusters, the modality gap)
  it kept recall@10 at 0.99 for text and image queries alike at nprobe 16, built 4x faster than
  HNSW32 and needs no graph memory;
- ``IVF<nlist>,PQ<d/8>x8np`` when even SQ8 codes exceed the budget (``np``: no polysemous
  training, which vistag never uses and which took 85% of the build). PQ codes alone gave recall@10
  0.53 for text queries on the same data, so PQ is always re-ranked: ``rerank`` x k candidates
  are re-scored exactly with the stored full vectors (memory-mapped from the shards);
- on disk (``storage="ondisk"``, IVF only) when even those codes exceed the budget, or, without a
  budget, when the SQ8 codes would take more than half of this machine's memory: the index is
  trained on a sample, filled block by block into sub-indexes written to disk, and their inverted
  lists are merged on disk (``faiss.contrib.ondisk.merge_ondisk``) into ``index.ivfdata`` in the
  version folder. Memory is then bounded by the coarse quantizer and one block (``block``
  vectors, sized to the budget), not by the corpus; searches read the lists through ``mmap``.
  8-bit codes are used on disk (recall without re-ranking; memory is no longer what they cost).
  ``storage="memory"`` / ``"ondisk"`` force either way (``--index-storage``).

After building, :func:`tune` raises ``nprobe`` (IVF) or ``efSearch`` (HNSW) until recall@10
against exact search reaches the target (0.95 by default) for *text* queries (prompts encoded by
the index's own model, plus texts users already asked for) and for image queries (a sample of
the corpus). The achieved figures are stored in the version's manifest.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.errors import InputError

EXACT_MAX = 100_000
TARGET_RECALL = 0.95
RERANK = 10
PROBE_STEPS = (8, 16, 32, 64, 128, 256, 512, 1024)
EF_STEPS = (32, 64, 128, 256, 512, 1024)
RERANK_STEPS = (10, 20, 50, 100, 200)
STORAGES = ("auto", "memory", "ondisk")
BLOCK_MIN, BLOCK_MAX = 10_000, 1_000_000  # vectors per on-disk build block


@dataclass(frozen=True)
class IndexChoice:
    """A planned index: FAISS factory string, starting search parameters, re-rank factor."""

    factory: str
    reason: str
    memory_bytes: int
    search: dict[str, int] = field(default_factory=dict)
    rerank: int = 0
    train_size: int = 0
    storage: str = "memory"  # "memory", or "ondisk": inverted lists merged on disk (see module)
    block: int = 0  # on disk: vectors per build block
    disk_bytes: int = 0  # on disk: size of the inverted lists file
    passed_over: str = ""  # an index type weighed and not chosen, and why

    @property
    def exact(self) -> bool:
        return self.factory == "Flat"

    @property
    def ondisk(self) -> bool:
        return self.storage == "ondisk"

    def describe(self) -> str:
        extra = f", re-rank {self.rerank}x candidates with stored vectors" if self.rerank else ""
        params = "".join(f", {k}={v}" for k, v in self.search.items())
        over = f"; not {self.passed_over}" if self.passed_over else ""
        if self.ondisk:
            return (
                f"{self.factory} on disk (~{self.disk_bytes / 2**20:.0f} MiB of inverted lists in index.ivfdata, "
                f"~{self.memory_bytes / 2**20:.0f} MiB in memory, built in blocks of {self.block} vectors"
                f"{params}{extra}): {self.reason}{over}"
            )
        return f"{self.factory} (~{self.memory_bytes / 2**20:.0f} MiB{params}{extra}): {self.reason}{over}"


def _nlist(n: int) -> int:
    return int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(n))))))


def exact_ms_per_vector(d: int, sample: int = 50_000) -> float:
    """Milliseconds one query's exact (Flat, inner product) search costs per stored vector of
    dimension ``d`` on this machine, one thread: the median of 7 searches over ``sample`` random
    vectors (measured once per process and dimension, well under a second)."""
    if d not in _EXACT_COST:
        import faiss

        xb = np.random.default_rng(0).standard_normal((sample, d), dtype=np.float32)
        index = faiss.IndexFlatIP(d)
        index.add(xb)
        q = xb[:1].copy()
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.search(q, 10)
            times = []
            for _ in range(7):
                start = time.perf_counter()
                index.search(q, 10)
                times.append(time.perf_counter() - start)
        finally:
            faiss.omp_set_num_threads(threads)
        _EXACT_COST[d] = sorted(times)[len(times) // 2] * 1000 / sample
    return _EXACT_COST[d]


_EXACT_COST: dict[int, float] = {}


def choose_index(
    n: int,
    d: int,
    *,
    memory_budget: int | None = None,
    override: str | None = None,
    exact_max: int = EXACT_MAX,
    storage: str = "auto",
    machine_memory: int | None = None,
    latency_ms: float | None = None,
    exact_cost: Callable[[int], float] = exact_ms_per_vector,
) -> IndexChoice:
    """Pick the index for ``n`` vectors of dimension ``d`` within ``memory_budget`` bytes.

    ``latency_ms``: a target for one query; exact search is kept while its estimated latency
    (``n * exact_cost(d)``) stays within it, instead of up to ``exact_max`` vectors.

    ``storage``: ``"auto"`` (in memory unless the index exceeds the budget, see the module),
    ``"memory"`` or ``"ondisk"``. Without a budget, on-disk storage is chosen when the codes
    exceed half of ``machine_memory`` (default: this machine's, or its cgroup limit).
    """
    if storage not in STORAGES:
        raise InputError(f"index storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    if latency_ms is not None:
        if not latency_ms > 0:
            raise InputError(f"latency target must be more than 0 ms, got {latency_ms}")
        if not override:
            per_vector = exact_cost(d)
            estimate = n * per_vector
            exact_max = int(latency_ms / per_vector) if per_vector > 0 else n
            note = f"exact search estimated at {estimate:.1f} ms a query"
            why = (
                f"{note} (within the {latency_ms:g} ms target)",
                f"{note} (over the {latency_ms:g} ms target): inverted lists with 8-bit codes",
            )
            choice = _plan_factory(n, d, memory_budget, None, exact_max, storage, why)
            return _placed(choice, n, d, memory_budget, storage, machine_memory, override)
    choice = _plan_factory(n, d, memory_budget, override, exact_max, storage)
    return _placed(choice, n, d, memory_budget, storage, machine_memory, override)


def _placed(
    choice: IndexChoice,
    n: int,
    d: int,
    memory_budget: int | None,
    storage: str,
    machine_memory: int | None,
    override: str | None,
) -> IndexChoice:
    """``choice`` kept in memory or moved on disk, as ``storage`` and the memory limit decide."""
    if storage == "memory":
        return choice
    limit = memory_budget if memory_budget is not None else (machine_memory or _machine_memory()) // 2
    if storage == "auto":
        if choice.memory_bytes <= limit or not choice.factory.startswith("IVF"):
            return choice
        return _on_disk(choice, n, d, limit, memory_budget is not None, "")
    if not choice.factory.startswith("IVF"):
        if override:
            raise InputError(f"on-disk storage needs an IVF index type, not {override!r}")
        choice = _plan_factory(n, d, None, f"IVF{_nlist(n)},SQ8", EXACT_MAX, storage)
    return _on_disk(choice, n, d, limit, memory_budget is not None, "asked for with --index-storage ondisk")


def _plan_factory(
    n: int,
    d: int,
    memory_budget: int | None,
    override: str | None,
    exact_max: int,
    storage: str,
    why: tuple[str, str] | None = None,
) -> IndexChoice:
    """The in-memory choice; for ``storage="auto"`` with a budget, one that falls back to on disk
    (8-bit codes) instead of failing when even PQ codes exceed the budget. ``why``: the reasons
    given for exact search within ``exact_max`` and for inverted lists above it."""
    within, over = why or (
        f"exact search: {n} vectors <= {exact_max}",
        f"{n} vectors > {exact_max}: inverted lists with 8-bit codes",
    )
    if override:
        rerank = RERANK if "PQ" in override else 0
        return IndexChoice(
            override,
            "asked for with --index-type",
            _estimate(override, n, d),
            rerank=rerank,
            train_size=_train_size(n, override),
        )
    flat = n * d * 4 + n * 8
    if n <= exact_max and (memory_budget is None or flat <= memory_budget):
        return IndexChoice("Flat", within, flat)
    nlist = _nlist(n)
    sq8 = n * (d + 8) + nlist * d * 4
    sq8_choice = IndexChoice(f"IVF{nlist},SQ8", "", sq8, {"nprobe": 16}, train_size=_train_size(n, "IVF"))
    if memory_budget is None or sq8 <= memory_budget:
        reason = over if n > exact_max else "Flat exceeds the budget"
        return IndexChoice(
            sq8_choice.factory,
            reason,
            sq8,
            sq8_choice.search,
            train_size=sq8_choice.train_size,
            passed_over=_hnsw_note(n, d, memory_budget),
        )
    m = max(8, d // 8)
    while d % m:
        m -= 1
    pq = n * (m + 8) + nlist * d * 4
    if pq > memory_budget:
        if storage == "memory":
            raise InputError(
                f"memory budget {memory_budget} bytes is too small for {n} vectors (PQ needs {pq})"
            )
        return replace(sq8_choice, reason=f"even PQ codes ({pq} bytes) exceed the memory budget")
    return IndexChoice(
        f"IVF{nlist},PQ{m}x8np",
        "8-bit codes exceed the memory budget: product quantisation, re-ranked with stored vectors",
        pq,
        {"nprobe": 16},
        RERANK,
        _train_size(n, "IVF"),
    )


def _hnsw_note(n: int, d: int, memory_budget: int | None) -> str:
    """Why an approximate plan is not HNSW (``--index-type HNSW32,Flat`` still builds one)."""
    hnsw = n * (d * 4 + 32 * 2 * 4 + 8)  # full vectors + 2M links of 4 bytes + id
    if memory_budget is not None and hnsw > memory_budget:
        return f"HNSW32: its vectors and graph (~{hnsw / 2**20:.0f} MiB) exceed the memory budget"
    return (
        f"HNSW32 (~{hnsw / 2**20:.0f} MiB): on CLIP-like vectors its recall@10 for text queries "
        "(away from the image clusters) stays lower at a higher latency (measured by bench/bench_index.py: "
        "0.88 at efSearch 1024 for 1M vectors, where IVF-SQ8 keeps 0.98 at under 1 ms), and it builds "
        "several times slower"
    )


def _on_disk(choice: IndexChoice, n: int, d: int, limit: int, budget: bool, why: str) -> IndexChoice:
    """``choice`` stored on disk: resident memory is the coarse quantizer plus one build block, and
    a block is as large as ``limit`` bytes allow (the budget, or half of the machine's memory)."""
    quantizer = (_ivf_nlist(choice.factory) or _nlist(n)) * d * 4
    per_vector = _vector_bytes(choice.factory, d) + 4 * d  # codes and id in the block, plus the float chunk
    block = (limit - quantizer) // per_vector
    if block < BLOCK_MIN and block < n:
        need = quantizer + BLOCK_MIN * per_vector
        raise InputError(
            f"memory budget {limit} bytes is too small for {n} vectors (building on disk needs {need})"
        )
    block = int(max(1, min(block, BLOCK_MAX, n)))
    where = "budget" if budget else "available (half of this machine's)"
    reason = why or (f"{choice.reason}; " if choice.reason else "") + (
        f"the index ({choice.memory_bytes} bytes) exceeds the memory {where}: built in blocks, inverted lists merged on disk"
    )
    return replace(
        choice,
        storage="ondisk",
        reason=reason,
        block=block,
        disk_bytes=_estimate(choice.factory, n, d),
        memory_bytes=quantizer + block * per_vector,
    )


def _machine_memory() -> int:
    """Physical memory, or the cgroup (container) limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _train_size(n: int, factory: str) -> int:
    if not factory.startswith("IVF"):
        return 0
    return int(min(n, max(100_000, 64 * _nlist(n))))


def _ivf_nlist(factory: str) -> int:
    """The number of inverted lists of an ``IVF<nlist>...`` factory string (0 if none)."""
    digits = factory[3:].split(",")[0].split("_")[0] if factory.startswith("IVF") else ""
    return int(digits) if digits.isdigit() else 0


def _vector_bytes(factory: str, d: int) -> int:
    """Bytes one vector takes in the index (codes, id, graph links)."""
    if "SQ8" in factory:
        return d + 8
    if "PQ" in factory:
        m = factory.split("PQ")[1].split("x")[0].split(",")[0]
        return (int(m) if m.isdigit() else d // 8) + 8
    if factory.startswith("HNSW"):
        return d * 4 + 32 * 2 * 4
    return d * 4 + (8 if factory != "Flat" else 0)


def _estimate(factory: str, n: int, d: int) -> int:
    """Bytes of the index for ``n`` vectors: their codes and ids, plus an IVF's coarse quantizer."""
    return n * _vector_bytes(factory, d) + _ivf_nlist(factory) * d * 4


def set_search_params(index: Any, params: dict[str, int]) -> None:
    """Apply ``nprobe`` / ``efSearch`` to an index (through its id map); ``rerank`` is not FAISS's."""
    import faiss

    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name == "rerank":
            continue
        space.set_index_parameter(index, name, int(value))


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean recall@k of (Q, k) ``found`` ids against (Q, k) ``truth`` ids."""
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max((t >= 0).sum(), 1)
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


@dataclass(frozen=True)
class Tuning:
    """Search settings reached (``nprobe``/``efSearch``, and ``rerank`` for PQ) and their recall@10."""

    search: dict[str, int]
    text_recall: float
    image_recall: float
    queries: dict[str, int]


def _ladder(choice: IndexChoice) -> list[dict[str, int]]:
    """Search settings from cheapest to most thorough."""
    if "IVF" in choice.factory:
        start = choice.search.get("nprobe", PROBE_STEPS[0])
        probes = [p for p in PROBE_STEPS if p >= start] or [start]
        if not choice.rerank:
            return [{"nprobe": p} for p in probes]
        return [{"nprobe": p, "rerank": r} for p in probes for r in RERANK_STEPS if r >= choice.rerank]
    if "HNSW" in choice.factory:
        return [{"efSearch": e} for e in EF_STEPS]
    return [{}]


def tune(
    index: Any,
    choice: IndexChoice,
    search: Callable[[np.ndarray, int, int], np.ndarray],
    queries: dict[str, tuple[np.ndarray, np.ndarray]],
    target: float = TARGET_RECALL,
    k: int = 10,
) -> Tuning:
    """Walk the search settings from cheapest up until every query set reaches ``target`` recall@k.

    ``search(xq, k, rerank) -> I`` runs the real search path (``rerank`` = 0 for none); ``queries``
    maps a kind ("text", "image") to (xq, exact ids (Q, k)). Returns the first setting that
    reaches the target, or the most thorough one with the recall it got.
    """
    result: dict[str, float] = {}
    params: dict[str, int] = {}
    for params in _ladder(choice):
        set_search_params(index, {n: v for n, v in params.items() if n != "rerank"})
        rerank = params.get("rerank", 0)
        result = {
            kind: recall_at(search(xq, k, rerank), truth) for kind, (xq, truth) in queries.items() if len(xq)
        }
        if all(r >= target for r in result.values()):
            break
    return Tuning(
        params,
        result.get("text", 1.0),
        result.get("image", 1.0),
        {kind: len(xq) for kind, (xq, _) in queries.items()},
    )
