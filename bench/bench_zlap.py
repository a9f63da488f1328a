"""Benchmark of query.zlap on synthetic clustered 512-d features (CPU, all cores).

For each (N, C) it measures wall time and peak memory (RSS) of: the image kNN graph (exact
``faiss.knn``, or above ``--ivf-above`` images an IVF-Flat index with a trained coarse
quantizer, ``nlist = 4 sqrt(N)``, ``nprobe`` 16 by default, its recall@k measured on a sample),
graph construction (kNN + image->text kNN + assembly of L), the transductive solve (all C
classes), the sparse-inductive precompute (``ZLaPInductive.fit``), per-query latency of
inductive scoring (exact and sparse), the ratio of propagation time to kNN-graph time, and
top-1 accuracy of zero-shot against ZLaP. With ``--product`` (default) it also runs the
product's path of ``vistag tag --method zlap`` on the same graph (``query.inductive.fit_zlap``:
one pass of solves for scores and table, float32 scores, sampled calibration, leave-self-out
inductive calibration), then scores, calibrates and ranks every image block by block as
``tag_corpus`` does (without the SQL inserts).

Memory: ``peak_GB`` is the process' peak resident set (VmHWM, reset before each phase through
``/proc/self/clear_refs``; sampled every 10 ms where that is not allowed), so it counts faiss's
C++ buffers and every thread; ``+GB`` is that peak above the resident set at the phase's start.

Usage::

    nice -n 10 python bench/bench_zlap.py                       # N=10k,50k, C=100 (~1-2 min)
    python bench/bench_zlap.py --sizes 1000000 --classes 1000   # 16 cores, 128 GB: ~6-8 min
    python bench/bench_zlap.py --sizes 20000 --ivf-above 10000  # the IVF path on a small run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import procmem  # noqa: E402 - beside this file

from indexer import faiss_gpu  # noqa: E402
from query.zlap import ZLaPInductive, build_graph, propagate_labels  # noqa: E402

GB = 1 << 30


def _rss() -> int:
    return procmem.status("VmRSS") * 1024


class Peak:
    """Peak RSS of a phase in bytes: VmHWM after a reset, else sampled every 10 ms."""

    def __enter__(self) -> Peak:
        self.start = self.peak = _rss()
        self.exact = procmem.reset_peak()
        self._sampled = None if self.exact else procmem.Sampled("VmRSS").__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sampled is None:
            self.peak = max(procmem.status("VmHWM") * 1024, self.start)
        else:
            self._sampled.__exit__(*exc)
            self.peak = max(self._sampled.peak * 1024, self.start)


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """Run ``fn``; return (result, wall seconds, peak RSS GB, peak RSS GB above the start)."""
    with Peak() as peak:
        t0 = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t0
    return out, secs, peak.peak / GB, (peak.peak - peak.start) / GB


def unit_rows(a: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place, in blocks; (n, d) float32."""
    for s in range(0, len(a), 65536):
        a[s : s + 65536] /= np.linalg.norm(a[s : s + 65536], axis=1, keepdims=True)
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
    return x[:n], np.ascontiguousarray(x[n:]), text, labels[:n], labels[n:]


def image_knn(
    x: np.ndarray, k: int, mode: str, args: argparse.Namespace
) -> tuple[tuple[np.ndarray, ...], dict]:
    """Image-vs-image kNN (self included): exact ``faiss.knn`` or IVF-Flat; returns ((D, I), facts)."""
    import faiss

    if mode.startswith("exact"):  # as vistag's graph: on the GPU where FAISS has one
        return faiss_gpu.knn(x, x, k), {}
    nlist = args.nlist or int(4 * np.sqrt(len(x)))
    nprobe = min(args.nprobe, nlist)
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    n_train = min(len(x), 40 * nlist)
    t0 = time.perf_counter()
    with faiss_gpu.ivf_training(index):
        index.train(x[np.sort(np.random.default_rng(0).choice(len(x), n_train, replace=False))])
    train_s = time.perf_counter() - t0
    index.add(x)
    index.nprobe = nprobe
    t0 = time.perf_counter()
    D, I = index.search(x, k)
    search_s = time.perf_counter() - t0
    # recall@k of the graph's lists against exact search, on a sample of rows
    rows = np.random.default_rng(1).choice(len(x), min(len(x), 1000), replace=False)
    _, truth = faiss.knn(x[rows], x, k, metric=faiss.METRIC_INNER_PRODUCT)
    recall = np.mean(
        [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(I[rows], truth, strict=True)]
    )
    return (D, I), {
        "nlist": nlist,
        "nprobe": nprobe,
        "train": n_train,
        "train_s": train_s,
        "search_s": search_s,
        "recall": float(recall),
    }


def query_latency(model: ZLaPInductive, q: np.ndarray, sparse: bool, singles: int) -> tuple[float, float]:
    """(amortised ms/query over the whole batch, median ms of single-query calls)."""
    t0 = time.perf_counter()
    model.scores(q, sparse=sparse)
    secs = time.perf_counter() - t0
    times = []
    for i in range(min(singles, len(q))):
        t0 = time.perf_counter()
        model.scores(q[i : i + 1], sparse=sparse)
        times.append(time.perf_counter() - t0)
    return 1e3 * secs / len(q), 1e3 * float(np.median(times))


def zero_shot_accuracy(x: np.ndarray, t: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of argmax cosine, in blocks of images."""
    hits = 0
    for s in range(0, len(x), 65536):
        hits += int(((x[s : s + 65536] @ t.T).argmax(1) == y[s : s + 65536]).sum())
    return hits / len(x)


class _NoSQL:
    """The catalog calls of ``store_tags``, counting rows instead of inserting them."""

    rows = 0

    def label_ids(self, names: list[str]) -> list[int]:
        return list(range(len(names)))

    def add_tags(self, rows: list[dict]) -> None:
        self.rows += len(rows)


def product_path(
    x: np.ndarray, t: np.ndarray, knn: tuple[np.ndarray, np.ndarray], args: argparse.Namespace
) -> dict:
    """vistag's ZLaP tag run on the same data and graph, minus text encoding and SQL."""
    from indexer.graph import KnnGraph
    from query.inductive import fit_zlap, solve_workers
    from query.scoring import CHUNK, TagConfig, store_tags
    from query.vocab import Label

    graph = KnnGraph(np.arange(len(x), dtype=np.int64), knn[0].astype(np.float32), knn[1].astype(np.int64))
    config = TagConfig(tuple(Label(f"class {i}") for i in range(len(t))), method="zlap", k=args.k)
    text = (t, np.zeros((0, t.shape[1]), np.float32), np.zeros(0, np.int64))
    workers = solve_workers(len(x) + len(t))
    with tempfile.TemporaryDirectory() as folder:
        scores, fit_s, fit_gb, fit_up = measure(lambda: fit_zlap(graph, x, text, config, Path(folder)))
    catalog = _NoSQL()
    blocks = scores.chunks(CHUNK, confidence=False)  # as tag_corpus: score, calibrate, rank, make rows

    def store() -> list:
        return store_tags(catalog, blocks, config.names, "zlap", 0, store_top=min(args.store_top, len(t)))

    _, pass_s, pass_gb, pass_up = measure(store)
    return {
        "prod_fit_s": fit_s,
        "prod_fit_GB": fit_gb,
        "prod_fit_+GB": fit_up,
        "prod_pass_s": pass_s,
        "prod_pass_GB": pass_gb,
        "prod_workers": workers,
        "prod_rows": catalog.rows,
    }


def run_case(n: int, c: int, args: argparse.Namespace) -> dict[str, Any]:
    """All measurements for one (N, C)."""
    t0 = time.perf_counter()
    x, q, t, y, _ = synth(n, args.queries, c, args.dim, args.seed)
    synth_s = time.perf_counter() - t0
    exact = n <= args.ivf_above or faiss_gpu.exact_graph_on_gpu(n)  # as vistag's graph (indexer.graph)
    mode = args.graph_knn if args.graph_knn != "auto" else ("exact" if exact else "ivf")
    if mode == "exact" and faiss_gpu.use_gpu():
        mode = "exact-gpu"

    ((dist, idx), ivf), knn_s, knn_gb, knn_up = measure(lambda: image_knn(x, min(args.k, n), mode, args))
    lap, asm_s, asm_gb, asm_up = measure(lambda: build_graph(x, t, k=args.k, knn=(dist, idx)))
    solve = lambda: propagate_labels(lap, c, chunk=args.chunk, workers=args.workers, return_info=True)  # noqa: E731
    (f, info), tr_s, tr_gb, tr_up = measure(solve)
    acc_zs, acc_lp = zero_shot_accuracy(x, t, y), float((f.argmax(1) == y).mean())
    f = lap = solve = None  # free before the inductive fit
    fit = lambda: ZLaPInductive(args.k, chunk=args.chunk, workers=args.workers).fit(x, t, knn=(dist, idx))  # noqa: E731
    model, fit_s, fit_gb, fit_up = measure(fit)
    pre_s = model.info_["fit"].seconds
    ex_b, ex_1 = query_latency(model, q[: args.exact_queries], sparse=False, singles=3)
    sp_b, sp_1 = query_latency(model, q, sparse=True, singles=5)
    model = None
    row: dict[str, Any] = {
        "N": n,
        "C": c,
        "knn": mode,
        "synth_s": synth_s,
        "knn_s": knn_s,
        "knn_GB": knn_gb,
        "graph_s": knn_s + asm_s,
        "graph_GB": max(knn_gb, asm_gb),
        "graph_+GB": max(knn_up, asm_up),
        "trans_s": tr_s,
        "trans_GB": tr_gb,
        "trans_+GB": tr_up,
        "cg_it": info.iterations,
        "pre_s": pre_s,
        "fit_s": fit_s,
        "pre_GB": fit_gb,
        "pre_+GB": fit_up,
        "qx_batch_ms": ex_b,
        "qx_1_ms": ex_1,
        "qs_batch_ms": sp_b,
        "qs_1_ms": sp_1,
        "trans/knn": tr_s / knn_s,
        "prop/knn": (tr_s + pre_s) / knn_s,
        "prop/graph": (tr_s + pre_s) / (knn_s + asm_s),
        "acc_zs": acc_zs,
        "acc_zlap": acc_lp,
        "ivf": ivf,
    }
    if args.product:
        row |= product_path(x, t, (dist, idx), args)
    return row


COLUMNS = [
    ("N", "{:>8d}"),
    ("C", "{:>5d}"),
    ("knn", "{:>5s}"),
    ("knn_s", "{:>7.2f}"),
    ("graph_s", "{:>8.2f}"),
    ("graph_GB", "{:>8.2f}"),
    ("trans_s", "{:>8.2f}"),
    ("trans_GB", "{:>8.2f}"),
    ("trans_+GB", "{:>9.2f}"),
    ("cg_it", "{:>5d}"),
    ("pre_s", "{:>7.2f}"),
    ("fit_s", "{:>7.2f}"),
    ("pre_GB", "{:>7.2f}"),
    ("qx_batch_ms", "{:>11.2f}"),
    ("qx_1_ms", "{:>8.2f}"),
    ("qs_batch_ms", "{:>11.3f}"),
    ("qs_1_ms", "{:>8.3f}"),
    ("trans/knn", "{:>9.3f}"),
    ("prop/knn", "{:>8.3f}"),
    ("prop/graph", "{:>10.3f}"),
    ("acc_zs", "{:>6.3f}"),
    ("acc_zlap", "{:>8.3f}"),
]
PRODUCT = [
    ("N", "{:>8d}"),
    ("C", "{:>5d}"),
    ("prod_fit_s", "{:>10.2f}"),
    ("prod_fit_GB", "{:>11.2f}"),
    ("prod_fit_+GB", "{:>12.2f}"),
    ("prod_workers", "{:>12d}"),
    ("prod_pass_s", "{:>11.2f}"),
    ("prod_pass_GB", "{:>12.2f}"),
    ("prod_rows", "{:>10d}"),
]


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Print the results as an aligned text table."""
    widths = [max(len(name), *(len(f.format(r[name])) for r in rows)) for name, f in columns]
    print(" ".join(name.rjust(w) for (name, _), w in zip(columns, widths, strict=True)))
    for r in rows:
        print(" ".join(f.format(r[name]).rjust(w) for (name, f), w in zip(columns, widths, strict=True)))


LEGEND = """\
knn_s          image kNN graph alone (faiss; 'exact' = faiss.knn ('exact-gpu': on the GPU), 'ivf' = IVF-Flat: train + add + search)
graph_s/GB     kNN + image->text kNN + assembly of L
trans_s/GB     transductive solve, all C classes, block CG (cg_it = max CG iterations)
pre_s          sparse-inductive precompute solve (streamed argmax); fit_s = fit incl. graph assembly
pre_GB         peak of the whole fit
qx_*           exact inductive scoring (kNN + block CG); qs_* sparse inductive (kNN + O(k) vote)
*_batch_ms     amortised per query over the batch; *_1_ms median of single-query calls
trans/knn      transductive solve time / kNN graph time
prop/knn       (transductive solve + sparse precompute) / kNN graph time; prop/graph: / graph_s
*_GB           peak RSS of the process during the phase (GB); *_+GB the peak above the phase start
prod_fit       product path (fit_zlap): graph, one solve pass (scores + table), calibrations
prod_pass      product path: store_tags per block of 8192 images (structure, top-N ranking, confidences
               of the kept entries, tag rows in batches), counting the rows instead of inserting them"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,50000", help="comma-separated N (e.g. 10000,100000,1000000)")
    ap.add_argument("--classes", default="100", help="comma-separated C (e.g. 100,1000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=256, help="inductive query batch (sparse scoring)")
    ap.add_argument("--exact-queries", type=int, default=32, help="queries of the exact inductive batch")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=32, help="right-hand sides solved together")
    ap.add_argument(
        "--graph-knn",
        choices=["auto", "exact", "ivf"],
        default="auto",
        help="auto: exact up to --ivf-above images, IVF above",
    )
    ap.add_argument("--ivf-above", type=int, default=200_000, help="auto mode: IVF graph above this N")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 4 sqrt(N))")
    ap.add_argument("--nprobe", type=int, default=16, help="IVF lists probed per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default, all cores)"
    )
    ap.add_argument("--workers", type=int, default=0, help="threads of the block solves (0: as --threads)")
    ap.add_argument("--store-top", type=int, default=5, help="product path: labels stored per image")
    ap.add_argument(
        "--product",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the product's tag path on the same graph",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every (N, C) combination and print the tables."""
    import faiss

    args = parse_args(argv)
    if args.threads > 0:
        faiss.omp_set_num_threads(args.threads)
    threads = faiss.omp_get_max_threads()
    args.workers = args.workers or threads
    sizes = [int(s) for s in args.sizes.split(",")]
    classes = [int(s) for s in args.classes.split(",")]
    start = time.perf_counter()
    rows = []
    for n in sizes:
        for c in classes:
            rows.append(run_case(n, c, args))
            print(
                f"done N={n} C={c} ({time.perf_counter() - start:.0f} s so far)", file=sys.stderr, flush=True
            )
    print(
        f"ZLaP benchmark: d={args.dim}, k={args.k}, gamma=5, alpha=0.3, chunk={args.chunk}, "
        f"queries={args.queries} (exact {args.exact_queries}), cpus={os.cpu_count()}, "
        f"faiss threads={threads}, solve threads={args.workers}, image kNN graph: {args.graph_knn} "
        f"(IVF above N={args.ivf_above:,})"
    )
    print_table(rows, COLUMNS)
    for r in rows:
        if r["ivf"]:
            v = r["ivf"]
            print(
                f"N={r['N']} C={r['C']}: IVF-Flat nlist={v['nlist']} nprobe={v['nprobe']}, trained on "
                f"{v['train']:,} images in {v['train_s']:.1f} s, search {v['search_s']:.1f} s, "
                f"graph recall@{args.k} vs exact {v['recall']:.3f} (1000 sampled images)"
            )
        print(f"N={r['N']} C={r['C']}: synthetic data {r['synth_s']:.1f} s")
    if args.product:
        print("product path (vistag tag --method zlap without text encoding and SQL):")
        print_table(rows, PRODUCT)
    print(LEGEND)
    print(
        f"process peak RSS {max(procmem.status('VmHWM') * 1024, _rss()) / GB:.2f} GB (since the last phase's reset); "
        f"total wall time {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
