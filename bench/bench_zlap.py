"""Benchmark of query.zlap on synthetic clustered 512-d features (CPU).

For each (N, C) it measures wall time and peak memory of: the image kNN search alone, graph
construction (kNN + assembly of L), the transductive solve (all C classes), the streamed
sparse-inductive precompute, and per-query latency of inductive scoring (exact and sparse),
plus the ratio of propagation time to kNN-search time.

Memory is the *tracemalloc peak* above the phase's starting level: it counts numpy/scipy
array allocations (numpy reports its buffers to tracemalloc) but not faiss-internal C++
buffers. The process-wide ``ru_maxrss`` high-water mark is printed at the end for reference.

Usage::

    nice -n 10 python bench/bench_zlap.py                       # N=10k,50k, C=100 (~1-2 min)
    python bench/bench_zlap.py --sizes 1000000 --classes 100,1000 --graph-knn ivf
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from query.zlap import ZLaPInductive, build_graph, propagate_labels  # noqa: E402


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; return (result, wall seconds, tracemalloc peak MB above the start level)."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    return out, secs, (tracemalloc.get_traced_memory()[1] - base) / 2**20


def unit_rows(a: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place; (n, d) float32."""
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


def synth(n: int, n_query: int, c: int, d: int, seed: int) -> tuple[np.ndarray, ...]:
    """Clustered images (n + n_query, d) and text (c, d), float32, with a modality gap.

    Images = class centre + noise; text = centre + shared offset + noise. Returns
    (images, queries, text, labels, query_labels).
    """
    rng = np.random.default_rng(seed)
    centres = (rng.standard_normal((c, d)) / np.sqrt(d)).astype(np.float32)
    offset = (rng.standard_normal(d) / np.sqrt(d) * 3.0).astype(np.float32)
    text = unit_rows(centres + offset + rng.standard_normal((c, d), dtype=np.float32) * (4.0 / d**0.5))
    labels = rng.integers(0, c, n + n_query)
    x = np.empty((n + n_query, d), dtype=np.float32)
    for s in range(0, n + n_query, 65536):  # chunked to bound temporaries
        e = min(s + 65536, n + n_query)
        x[s:e] = centres[labels[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32) * (1.5 / d**0.5)
    unit_rows(x)
    return x[:n], x[n:], text, labels[:n], labels[n:]


def image_knn(x: np.ndarray, k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Image-vs-image kNN (self included): exact ``faiss.knn`` or an IVF-Flat ANN index."""
    import faiss

    if mode == "exact":
        return faiss.knn(x, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    nlist = int(4 * np.sqrt(len(x)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    train = x[np.random.default_rng(0).choice(len(x), min(len(x), 40 * nlist), replace=False)]
    index.train(train)
    index.add(x)
    index.nprobe = 16
    return index.search(x, k)


def query_latency(model: ZLaPInductive, q: np.ndarray, sparse: bool) -> tuple[float, float]:
    """(amortised ms/query over the whole batch, median ms of single-query calls)."""
    _, secs, _ = measure(lambda: model.scores(q, sparse=sparse))
    singles = []
    for i in range(5):
        t0 = time.perf_counter()
        model.scores(q[i : i + 1], sparse=sparse)
        singles.append(time.perf_counter() - t0)
    return 1e3 * secs / len(q), 1e3 * float(np.median(singles))


def run_case(n: int, c: int, args: argparse.Namespace) -> dict[str, float]:
    """All measurements for one (N, C)."""
    x, q, t, y, _ = synth(n, args.queries, c, args.dim, args.seed)
    mode = args.graph_knn if args.graph_knn != "auto" else ("exact" if n <= 200_000 else "ivf")
    (dist, idx), knn_s, knn_mb = measure(lambda: image_knn(x, min(args.k, n), mode))
    lap, asm_s, asm_mb = measure(lambda: build_graph(x, t, k=args.k, knn=(dist, idx)))
    (f, info), tr_s, tr_mb = measure(lambda: propagate_labels(lap, c, chunk=args.chunk, return_info=True))
    acc_zs, acc_lp = float(((x @ t.T).argmax(1) == y).mean()), float((f.argmax(1) == y).mean())
    f = lap = None  # free before the inductive fit
    model, fit_s, fit_mb = measure(lambda: ZLaPInductive(args.k, chunk=args.chunk).fit(x, t, knn=(dist, idx)))
    pre_s = model.info_["fit"].seconds
    ex_b, ex_1 = query_latency(model, q, sparse=False)
    sp_b, sp_1 = query_latency(model, q, sparse=True)
    return {
        "N": n,
        "C": c,
        "knn": mode,
        "knn_s": knn_s,
        "knn_MB": knn_mb,
        "graph_s": knn_s + asm_s,
        "graph_MB": max(knn_mb, asm_mb),
        "trans_s": tr_s,
        "trans_MB": tr_mb,
        "cg_it": info.iterations,
        "pre_s": pre_s,
        "fit_s": fit_s,
        "pre_MB": fit_mb,
        "qx_batch_ms": ex_b,
        "qx_1_ms": ex_1,
        "qs_batch_ms": sp_b,
        "qs_1_ms": sp_1,
        "trans/knn": tr_s / knn_s,
        "prop/knn": (tr_s + pre_s) / knn_s,
        "acc_zs": acc_zs,
        "acc_zlap": acc_lp,
    }


COLUMNS = [
    ("N", "{:>8d}"),
    ("C", "{:>5d}"),
    ("knn", "{:>5s}"),
    ("knn_s", "{:>7.2f}"),
    ("knn_MB", "{:>7.0f}"),
    ("graph_s", "{:>8.2f}"),
    ("graph_MB", "{:>8.0f}"),
    ("trans_s", "{:>8.2f}"),
    ("trans_MB", "{:>8.0f}"),
    ("cg_it", "{:>5d}"),
    ("pre_s", "{:>7.2f}"),
    ("fit_s", "{:>7.2f}"),
    ("pre_MB", "{:>7.0f}"),
    ("qx_batch_ms", "{:>11.2f}"),
    ("qx_1_ms", "{:>8.2f}"),
    ("qs_batch_ms", "{:>11.3f}"),
    ("qs_1_ms", "{:>8.3f}"),
    ("trans/knn", "{:>9.3f}"),
    ("prop/knn", "{:>8.3f}"),
    ("acc_zs", "{:>6.3f}"),
    ("acc_zlap", "{:>8.3f}"),
]


def print_table(rows: list[dict[str, float]]) -> None:
    """Print the results as an aligned text table."""
    widths = [len(f.format(rows[0][name])) if rows else len(name) for name, f in COLUMNS]
    print(" ".join(name.rjust(max(w, len(name))) for (name, _), w in zip(COLUMNS, widths, strict=True)))
    for r in rows:
        cells = [
            f.format(r[name]).rjust(max(w, len(name))) for (name, f), w in zip(COLUMNS, widths, strict=True)
        ]
        print(" ".join(cells))


LEGEND = """\
knn_s/knn_MB   image kNN search alone (faiss; 'exact' = faiss.knn, 'ivf' = IVF-Flat nprobe 16)
graph_s/MB     kNN + image->text kNN + assembly of L (MB: max of the two phases)
trans_s/MB     transductive solve, all C classes, block CG (cg_it = max CG iterations)
pre_s          sparse-inductive precompute solve (streamed argmax); fit_s = fit incl. graph assembly
pre_MB         peak of the whole fit
qx_*           exact inductive scoring (kNN + block CG); qs_* sparse inductive (kNN + O(k) vote)
*_batch_ms     amortised per query over the batch; *_1_ms median of single-query calls
trans/knn      transductive solve time / kNN search time
prop/knn       (transductive solve + sparse precompute) / kNN search time
MB             tracemalloc peak above the phase start (numpy/scipy arrays; faiss C++ buffers excluded)"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,50000", help="comma-separated N (e.g. 10000,100000,1000000)")
    ap.add_argument("--classes", default="100", help="comma-separated C (e.g. 100,1000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=256, help="inductive query batch size")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=32, help="right-hand sides solved together")
    ap.add_argument(
        "--graph-knn",
        choices=["auto", "exact", "ivf"],
        default="auto",
        help="auto: exact up to N=200k, IVF above",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every (N, C) combination and print the table."""
    args = parse_args(argv)
    if args.threads > 0:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    classes = [int(s) for s in args.classes.split(",")]
    tracemalloc.start()
    rows = []
    for n in sizes:
        for c in classes:
            rows.append(run_case(n, c, args))
            print(f"done N={n} C={c}", file=sys.stderr, flush=True)
    print(
        f"ZLaP benchmark: d={args.dim}, k={args.k}, gamma=5, alpha=0.3, chunk={args.chunk}, "
        f"queries={args.queries}, cpus={os.cpu_count()}, faiss threads={args.threads or 'default'}, "
        f"image kNN graph: {args.graph_knn}"
    )
    print_table(rows)
    print(LEGEND)
    print(f"process ru_maxrss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
