"""Search latency: vistag's in-process query path against a raw FAISS search on the same index.

    python bench/bench_search.py [--vectors 100000] [--dim 512] [--queries 200] [-k 10]

Builds a catalog and a published index of clustered synthetic vectors in a temporary home, then
times, per query: raw ``index.search`` on the loaded FAISS index (the baseline), and
``Searcher.search_vectors`` (version check, FAISS search, catalog join). Text encoding is timed
separately with a tiny random model, since it depends only on the model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def clustered(n: int, d: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_home(root: Path, xb: np.ndarray):
    from indexer import index as versions
    from indexer.catalog import Catalog
    from indexer.home import Home
    from vistag.models import ModelIdentity

    home = Home.resolve(root).ensure()
    catalog = Catalog(home.db_url)
    identity = ModelIdentity("synthetic", None, xb.shape[1], {"size": 224}, "")
    run = catalog.start_run("index", catalog.model_id(identity))
    rows = [{"uri": f"/archive/{i:07d}.jpg", "sha256": f"{i:064x}", "size": 1, "mtime": 0.0, "width": 640,
             "height": 480, "status": "indexed"} for i in range(len(xb))]  # fmt: skip
    catalog.upsert_images(rows, run)
    ids = np.arange(1, len(xb) + 1, dtype=np.int64)
    version = versions.write_version(home, identity, versions.build_index(xb, ids, "Flat"), "Flat", run)
    versions.publish(home, version)
    return home, catalog


def per_query_ms(fn, queries: np.ndarray) -> list[float]:
    out = []
    for q in queries:
        start = time.perf_counter()
        fn(q[None, :])
        out.append((time.perf_counter() - start) * 1000)
    return out


def text_encode_ms(n: int = 50) -> float:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from query.text import TextEncoder
    from tests.conftest import make_tiny_model
    from vistag.models import load_model, parse_model_spec

    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_model(parse_model_spec("local-dir:" + str(make_tiny_model(Path(tmp)))), "cpu")
        enc = TextEncoder(loaded)
        enc.encode(["warm up"])
        start = time.perf_counter()
        for i in range(n):
            enc.encode([f"a photo of a red bicycle number {i}"])
    return (time.perf_counter() - start) * 1000 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    from query.search import Searcher

    rng = np.random.default_rng(0)
    xb = clustered(args.vectors, args.dim, 100, rng)
    xq = clustered(args.queries, args.dim, 100, rng)
    with tempfile.TemporaryDirectory() as tmp:
        home, catalog = build_home(Path(tmp), xb)
        searcher = Searcher(home, catalog)
        searcher.search_vectors(xq[:1], args.k)  # load the index once
        index = searcher._index
        raw = per_query_ms(lambda q: index.search(q, args.k), xq)
        full = per_query_ms(lambda q: searcher.search_vectors(q, args.k), xq)
        hits = searcher.search_vectors(xq[:1], args.k)[0]
        assert len(hits) == args.k and hits[0].uri.startswith("/archive/")
    p50 = statistics.median
    print(f"{args.vectors} vectors x {args.dim}-d, Flat inner product, k={args.k}, {args.queries} queries")
    print(f"raw FAISS search          : p50 {p50(raw):7.3f} ms   max {max(raw):7.3f} ms")
    print(f"vistag search (+catalog)  : p50 {p50(full):7.3f} ms   max {max(full):7.3f} ms")
    print(f"ratio vistag / raw (p50)  : {p50(full) / p50(raw):7.2f}")
    print(f"text encoding, tiny model : {text_encode_ms():7.3f} ms per query (model-dependent)")


if __name__ == "__main__":
    main()
