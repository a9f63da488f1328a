"""Index types at scale: build time, peak memory, query latency and recall@10 for image and text
queries, each against exact search (the baseline) in the same run; in-memory and on-disk builds.

    python bench/bench_index.py [--vectors 200000] [--dim 512]
        [--types Flat,IVF-SQ8,IVF-PQ,HNSW32,IVF-SQ8-disk] [--ondisk-budget 1G] [--tmp DIR]
        [--autofaiss-python /tmp/af/bin/python] [--autofaiss-memory 4G]

Vectors are clustered (1,000 clusters, generated in parallel threads as float32); 200 text-like
queries sit away from the image clusters (a shared offset: CLIP's modality gap), 200 image
queries are corpus vectors. A first process generates the data, computes the exact top-10 of
every query (the baseline) and trains the IVF coarse quantizer once, on the sample vistag would
train on (``train s``: add it to an IVF type's ``build s`` for a whole vistag build). Then every
index type is built in its own process the way vistag builds it
(:func:`indexer.build.build_from_chunks` with the planner's choice: codes trained on the sample,
vectors added 100,000 at a time; ``-disk`` types built block by block and merged on disk into
``index.ivfdata`` with ``--ondisk-budget`` deciding the block size). The built index is written
and read back as the searcher reads it (memory-mapped when on disk or at least 256 MiB), its
search depth tuned as vistag does (nprobe / efSearch / re-rank depth raised until recall@10 >=
0.95 for both query kinds), then latency is measured one query at a time on one thread.

Columns: ``build s`` (training the codes + adding + merging on disk); ``peak+MB`` the peak resident memory of the
build above what the process held before it (the data and the exact baseline): the kernel's
high-water mark, which also counts pages of files mapped by the build (the on-disk merge
writes ``index.ivfdata`` through a mapping); ``anon+MB`` the peak of anonymous memory only
(sampled every 10 ms), i.e. what the build really needs; ``disk MB`` the index files; ``load+MB``
the anonymous memory the searcher's load adds (near 0 when mapped); ``p50 ms`` one query, one
thread, on the loaded index, with ``vs Flat`` its ratio to exact search.

Sizes of the issue: ``--vectors 1000000`` and ``5000000`` (data 2 GB / 10 GB; on a 16-core,
128 GiB machine each size takes a few minutes; HNSW32 is left out above 2,000,000 vectors
unless named in ``--types``: its build alone would take longer than all the others).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import procmem  # beside this file (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TYPES = {
    "Flat": ("Flat", "memory"),
    "IVF-SQ8": ("IVF{nlist},SQ8", "memory"),
    "IVF-PQ": ("IVF{nlist},PQ64x8np", "memory"),
    "HNSW32": ("HNSW32,Flat", "memory"),
    "IVF-SQ8-disk": ("IVF{nlist},SQ8", "ondisk"),
    "IVF-PQ-disk": ("IVF{nlist},PQ64x8np", "ondisk"),
}
DEFAULT_TYPES = "Flat,IVF-SQ8,IVF-PQ,HNSW32,IVF-SQ8-disk"
CLUSTERS, QUERIES, ROWS = 1000, 200, 65_536


def data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corpus (n, d), text-like queries, image queries), L2-normalised float32, the same for a
    seed whatever the number of threads (each block of rows has its own random stream)."""
    root = np.random.SeedSequence(seed)
    rng = np.random.default_rng(root.spawn(1)[0])
    centres = rng.standard_normal((CLUSTERS, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    xb = np.empty((n, d), np.float32)
    blocks = list(range(0, n, ROWS))
    streams = root.spawn(len(blocks) + 1)[1:]

    def fill(i: int) -> None:
        r = np.random.default_rng(streams[i])
        part = xb[blocks[i] : blocks[i] + ROWS]
        r.standard_normal(part.shape, dtype=np.float32, out=part)
        part *= 0.06
        part += centres[r.integers(0, CLUSTERS, len(part))]
        part /= np.linalg.norm(part, axis=1, keepdims=True)

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # NumPy's generators release the GIL
        list(pool.map(fill, range(len(blocks))))
    gap = rng.standard_normal((1, d), dtype=np.float32)
    gap /= np.linalg.norm(gap)
    xt = 0.5 * centres[rng.integers(0, CLUSTERS, QUERIES)] + 0.8 * gap
    xt += 0.05 * rng.standard_normal(xt.shape, dtype=np.float32)
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    return xb, xt.astype(np.float32), xb[np.sort(rng.choice(n, QUERIES, replace=False))].copy()


def prepare(n: int, d: int, tmp: Path, ivf: bool, save: bool = False) -> dict:
    """Exact top-10 of the queries, and the IVF coarse centroids trained once (run in a child);
    with ``save``, also the vectors and queries as .npy files (for the autofaiss comparison)."""
    import faiss

    from indexer import faiss_gpu
    from indexer.build import empty_index
    from indexer.choice import _nlist, choose_index
    from indexer.vectors import blas_for_few_queries

    t0 = time.perf_counter()
    xb, xt, xi = data(n, d)
    gen_s = time.perf_counter() - t0
    if save:
        (tmp / "embeddings").mkdir(exist_ok=True)
        np.save(tmp / "embeddings" / "xb.npy", xb)  # autofaiss reads every .npy of this folder
        np.save(tmp / "queries-text.npy", xt)
        np.save(tmp / "queries-image.npy", xi)
    t0 = time.perf_counter()
    for kind, xq in (("text", xt), ("image", xi)):
        with blas_for_few_queries():
            np.save(tmp / f"truth-{kind}.npy", faiss.knn(xq, xb, 10, metric=faiss.METRIC_INNER_PRODUCT)[1])
    exact_s = time.perf_counter() - t0
    out = {
        "gen_s": gen_s,
        "exact_s": exact_s,
        "nlist": _nlist(n),
        "train_n": 0,
        "train_s": 0.0,
        "train_on": "cpu",
    }
    if ivf:
        choice = choose_index(n, d, override=f"IVF{_nlist(n)},Flat", storage="memory")
        sample = xb[np.sort(np.random.default_rng(0).choice(n, choice.train_size, replace=False))]
        t0 = time.perf_counter()
        index = empty_index(d, choice.factory, id_map=False)
        with faiss_gpu.ivf_training(index) as on_gpu:  # as vistag trains: on the GPU where FAISS has one
            index.train(sample)
        out |= {
            "train_n": len(sample),
            "train_s": time.perf_counter() - t0,
            "train_on": "gpu" if on_gpu else "cpu",
        }
        quantizer = faiss.extract_index_ivf(index).quantizer
        np.save(tmp / "centroids.npy", quantizer.reconstruct_n(0, quantizer.ntotal))
    return out


def one(kind: str, n: int, d: int, ondisk_budget: int, tmp: Path) -> dict:
    """Build, load, tune and time one index type (run in a child process)."""
    import faiss

    from indexer import build, vectors, versions
    from indexer.choice import _nlist, choose_index, recall_at, tune

    xb, xt, xi = data(n, d)
    truth = {kind_: np.load(tmp / f"truth-{kind_}.npy") for kind_ in ("text", "image")}
    pattern, storage = TYPES[kind]
    factory = pattern.format(nlist=_nlist(n))
    choice = choose_index(
        n, d, override=factory, storage=storage, memory_budget=ondisk_budget if storage == "ondisk" else None
    )
    centroids = np.load(tmp / "centroids.npy") if factory.startswith("IVF") else None
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=tmp))
    ids = np.arange(n, dtype=np.int64)
    procmem.reset_peak()
    rss0 = procmem.status("VmRSS")
    with procmem.Sampled("RssAnon") as anon:
        start = time.perf_counter()
        pick = np.sort(np.random.default_rng(0).choice(n, max(choice.train_size, 1), replace=False))
        step = min(vectors.BUILD_CHUNK, choice.block) if choice.ondisk else vectors.BUILD_CHUNK
        chunks = ((ids[s : s + step], xb[s : s + step]) for s in range(0, n, step))
        built = build.build_from_chunks(d, choice, lambda: xb[pick], chunks, folder, centroids)
        build_s = time.perf_counter() - start
    peak = procmem.status("VmHWM")
    path = folder / versions.INDEX_FILE
    lists = build.ondisk_lists(built)
    if lists is not None:
        lists.filename = build.ONDISK_FILE
    faiss.write_index(built, str(path))
    del built, lists
    disk = sum(f.stat().st_size for f in folder.iterdir())
    before = procmem.status("RssAnon")
    served = versions.read_index(path, storage)  # as the searcher loads it
    load_mb = (procmem.status("RssAnon") - before) / 1024
    mapped = any(str(folder) in line for line in Path("/proc/self/maps").read_text().splitlines())

    def search(xq: np.ndarray, k: int, rerank: int) -> np.ndarray:
        return (
            vectors.rerank_search(served, xq, k, rerank, lambda i: xb[i])[1]
            if rerank
            else served.search(xq, k)[1]
        )

    with vectors.blas_for_few_queries():  # batches of 200 queries (Flat: exact search on millions)
        tuning = tune(served, choice, search, {"text": (xt, truth["text"]), "image": (xi, truth["image"])})
        recall = {
            kind_: recall_at(search(xq, 10, tuning.search.get("rerank", 0)), truth[kind_])
            for kind_, xq in (("text", xt), ("image", xi))
        }
    rerank = tuning.search.get("rerank", 0)
    faiss.omp_set_num_threads(1)
    lat: list[float] = []
    spent = time.perf_counter()
    for q in xt[:100]:
        t1 = time.perf_counter()
        search(q[None, :], 10, rerank)
        lat.append((time.perf_counter() - t1) * 1000)
        if time.perf_counter() - spent > 30 and len(lat) >= 10:  # exact search on millions: enough samples
            break
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    result = {
        "type": kind,
        "factory": factory,
        "storage": storage,
        "block": choice.block,
        "build_s": build_s,
        "rss_added_mb": (peak - rss0) / 1024,
        "anon_added_mb": (anon.peak - anon.start) / 1024,
        "disk_mb": disk / 2**20,
        "load_mb": load_mb,
        "mapped": mapped,
        "p50_ms": statistics.median(lat),
        "text_recall": recall["text"],
        "image_recall": recall["image"],
        "search": tuning.search,
    }
    shutil.rmtree(folder, ignore_errors=True)
    return result


def main() -> None:
    from vistag.cli import parse_size

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--types", help=f"comma-separated, of {', '.join(TYPES)} (default {DEFAULT_TYPES})")
    ap.add_argument(
        "--ondisk-budget",
        type=parse_size,
        default=2**30,
        help="memory budget of the on-disk builds: sets their block size (default 1G)",
    )
    ap.add_argument(
        "--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where index files are written"
    )
    ap.add_argument(
        "--autofaiss-python",
        metavar="PYTHON",
        help="also build the index autofaiss chooses, with this Python (a separate environment: "
        "autofaiss needs numpy<2), on the same vectors and queries",
    )
    ap.add_argument("--autofaiss-memory", default="4G", help="autofaiss max_index_memory_usage (default 4G)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child.startswith("prepare"):
            result = prepare(
                args.vectors, args.dim, args.tmp, ivf="ivf" in args.child, save="save" in args.child
            )
        else:
            result = one(args.child, args.vectors, args.dim, args.ondisk_budget, args.tmp)
        print(json.dumps(result))
        return
    kinds = (args.types or DEFAULT_TYPES).split(",")
    if not args.types and args.vectors > 2_000_000:
        kinds.remove("HNSW32")
        print("HNSW32 left out above 2,000,000 vectors (name it in --types to include it)", flush=True)
    kinds.sort(key=lambda k: k != "Flat")  # the baseline first: every row shows its ratio to it
    if args.autofaiss_python:
        kinds.append("autofaiss")
    unknown = set(kinds) - set(TYPES) - {"autofaiss"}
    if unknown:
        ap.error(f"unknown types {sorted(unknown)}; known: {', '.join(TYPES)}")
    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.tmp))
    try:
        run(args, kinds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _child(args: argparse.Namespace, kind: str, work: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--vectors",
        str(args.vectors),
        "--dim",
        str(args.dim),
        "--ondisk-budget",
        str(args.ondisk_budget),
        "--tmp",
        str(work),
    ]
    if kind == "autofaiss":
        cmd = [
            args.autofaiss_python,
            str(ROOT / "bench" / "autofaiss_child.py"),
            str(work),
            args.autofaiss_memory,
        ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    print(f"  {kind}: {time.perf_counter() - start:.0f}s", file=sys.stderr, flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace, kinds: list[str], work: Path) -> None:
    ivf = any(TYPES[k][0].startswith("IVF") for k in kinds if k in TYPES)
    prep = _child(
        args, "prepare" + ("-ivf" if ivf else "") + ("-save" if args.autofaiss_python else ""), work
    )
    print(
        f"{args.vectors} vectors x {args.dim}-d, clustered; {QUERIES} text-like and {QUERIES} image queries; k=10; "
        f"{os.cpu_count()} cores; data generated in {prep['gen_s']:.1f}s; exact baseline (400 queries, all cores) "
        f"{prep['exact_s']:.1f}s; IVF{prep['nlist']} coarse quantizer trained once on {prep['train_n']} vectors: "
        f"train s {prep['train_s']:.1f} (k-means on the {prep['train_on'].upper()})",
        flush=True,
    )
    print(
        f"{'type':13} {'factory':18} {'build s':>8} {'peak+MB':>8} {'anon+MB':>8} {'disk MB':>8} {'load+MB':>8} "
        f"{'p50 ms':>7} {'vs Flat':>7} {'R@10 text':>9} {'R@10 img':>8}  search",
        flush=True,
    )
    results = []
    for kind in kinds:
        r = _child(args, kind, work)
        results.append(r)
        if kind == "autofaiss":
            print(
                f"autofaiss chose {r['factory']} with {r['search']} "
                f"(max_index_memory_usage {args.autofaiss_memory}, max_index_query_time_ms 10)",
                flush=True,
            )
        base = next((x for x in results if x["type"] == "Flat"), results[0])
        load = f"{r['load_mb']:.0f}{'m' if r['mapped'] else ''}"
        print(
            f"{r['type']:13} {r['factory']:18} {r['build_s']:8.1f} {r['rss_added_mb']:8.0f} {r['anon_added_mb']:8.0f} "
            f"{r['disk_mb']:8.0f} {load:>8} {r['p50_ms']:7.2f} {r['p50_ms'] / base['p50_ms']:7.2f} "
            f"{r['text_recall']:9.3f} {r['image_recall']:8.3f}  {r['search']}",
            flush=True,
        )
    for r in results:
        if r["storage"] == "ondisk":
            print(
                f"{r['type']}: built in blocks of {r['block']} vectors (--ondisk-budget {args.ondisk_budget}), "
                "lists merged on disk into index.ivfdata and served through mmap"
            )
    print(
        "IVF build s excludes the shared coarse training (train s above); load+MB: anonymous memory added by "
        "loading the written index as the searcher does ('m': memory-mapped)"
    )


if __name__ == "__main__":
    main()
