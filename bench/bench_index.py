"""Index types at scale: build time, peak memory, query latency and recall@10 for image and text
queries, each against exact search (the baseline) in the same run.

    python bench/bench_index.py [--vectors 200000] [--dim 512] [--types Flat,IVF-SQ8,IVF-PQ,HNSW32]

Vectors are clustered (1,000 clusters); text-like queries sit away from the image clusters (a
shared offset: CLIP's modality gap), image queries are corpus vectors. Every index type is built
in its own process; "peak+MB" is the peak resident memory during the build above what the
process held before it (the data and the exact baseline), i.e. the build's own peak. Search depth is tuned as vistag does
(nprobe / efSearch / re-rank depth raised until recall@10 >= 0.95 for both query kinds), then
latency is measured one query at a time. ``--vectors 1000000`` and ``5000000`` are the sizes of
the issue; they need about 4 GB and 20 GB of memory for the data alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TYPES = {"Flat": "Flat", "IVF-SQ8": "IVF{nlist},SQ8", "IVF-PQ": "IVF{nlist},PQ64x8", "HNSW32": "HNSW32,Flat"}


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)

    def norm(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    centres = norm(rng.standard_normal((1000, d)))
    xb = np.empty((n, d), np.float32)
    for s in range(0, n, 200_000):
        m = min(200_000, n - s)
        xb[s : s + m] = norm(centres[rng.integers(0, 1000, m)] + 0.06 * rng.standard_normal((m, d)).astype(np.float32))
    gap = norm(rng.standard_normal((1, d)))
    xt = norm(0.5 * centres[rng.integers(0, 1000, 200)] + 0.8 * gap + 0.05 * rng.standard_normal((200, d)))
    return xb, xt, xb[rng.choice(n, 200, replace=False)]


def _status(key: str) -> int:
    """A /proc/self/status figure in KiB (VmRSS now, VmHWM peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    """Reset the peak-RSS mark (Linux clear_refs 5) and return the current RSS in KiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status("VmRSS")


def one(kind: str, n: int, d: int) -> dict:
    """Build, tune and time one index type (run in a child process)."""
    import faiss

    from indexer.index import build_index, rerank_search
    from indexer.planner import _nlist, plan_index, recall_at, tune

    xb, xt, xi = data(n, d)
    ids = np.arange(n, dtype=np.int64)
    exact = faiss.IndexFlatIP(d)
    exact.add(xb)
    truth = {"text": exact.search(xt, 10)[1], "image": exact.search(xi, 10)[1]}
    del exact
    factory = TYPES[kind].format(nlist=_nlist(n))
    choice = plan_index(n, d, override=factory)
    rss0 = _reset_peak()
    start = time.perf_counter()
    index = build_index(xb, ids, factory)
    build = time.perf_counter() - start
    peak = _status("VmHWM")

    def search(xq: np.ndarray, k: int, rerank: int) -> np.ndarray:
        return rerank_search(index, xq, k, rerank, lambda i: xb[i])[1] if rerank else index.search(xq, k)[1]

    tuning = tune(index, choice, search, {"text": (xt, truth["text"]), "image": (xi, truth["image"])})
    rerank = tuning.search.get("rerank", 0)
    faiss.omp_set_num_threads(1)
    lat = []
    for q in xt[:100]:
        t0 = time.perf_counter()
        search(q[None, :], 10, rerank)
        lat.append((time.perf_counter() - t0) * 1000)
    return {"type": kind, "factory": factory, "build_s": build, "rss_added_mb": (peak - rss0) / 1024, "p50_ms": statistics.median(lat),
            "text_recall": recall_at(search(xt, 10, rerank), truth["text"]),
            "image_recall": recall_at(search(xi, 10, rerank), truth["image"]), "search": tuning.search}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--types", default="Flat,IVF-SQ8,IVF-PQ,HNSW32")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.vectors, args.dim)))
        return
    results = []
    for kind in args.types.split(","):
        cmd = [sys.executable, __file__, "--child", kind, "--vectors", str(args.vectors), "--dim", str(args.dim)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
    base = next((r for r in results if r["type"] == "Flat"), results[0])
    print(f"{args.vectors} vectors x {args.dim}-d, clustered; 200 text-like and 200 image queries; k=10")
    print(f"{'type':9} {'factory':18} {'build s':>8} {'peak+MB':>8} {'p50 ms':>7} {'vs Flat':>7} "
          f"{'R@10 text':>9} {'R@10 img':>8}  search")  # fmt: skip
    for r in results:
        print(f"{r['type']:9} {r['factory']:18} {r['build_s']:8.1f} {r['rss_added_mb']:8.0f} {r['p50_ms']:7.2f} "
              f"{r['p50_ms'] / base['p50_ms']:7.2f} {r['text_recall']:9.3f} {r['image_recall']:8.3f}  {r['search']}")  # fmt: skip


if __name__ == "__main__":
    main()
