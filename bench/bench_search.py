"""Search latency: vistag's in-process query path against a raw FAISS search on the same index.

    python bench/bench_search.py [--vectors 100000] [--dim 512] [--queries 200] [-k 10]
                                 [--index-type IVF1024,PQ64x8np] [--rerank 10]

Builds a catalog and a published index of clustered synthetic vectors in a temporary home, then
times, per query: raw ``index.search`` on the loaded FAISS index (the baseline), and
``Searcher.search_vectors`` (version check, FAISS search, catalog join). With a re-ranked index
type (PQ), the search also re-scores ``rerank`` x k candidates with their stored vectors, read
through the version's vector table; the same searches through the catalog (how versions without
a table re-rank) are timed too. Text encoding is timed
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


def build_home(root: Path, xb: np.ndarray, index_type: str = "Flat", rerank: int = 0, nprobe: int = 16):
    """A home whose catalog and shards hold ``xb`` (as ``vistag index`` leaves them), with a
    published ``index_type`` version (and its hit table); ``rerank`` > 0 re-ranks that many times
    k candidates; IVF types search ``nprobe`` lists."""
    from core.models import ModelIdentity
    from indexer import build, versions
    from indexer.catalog import Catalog
    from indexer.choice import choose_index
    from indexer.home import Home
    from pipeline import shards

    home = Home.resolve(root).ensure()
    catalog = Catalog(home.db_url)
    identity = ModelIdentity("synthetic", None, xb.shape[1], {"size": 224}, "")
    model_id = catalog.model_id(identity)
    run = catalog.start_run("index", model_id)
    rows = [
        {
            "uri": f"/archive/{i:07d}.jpg",
            "sha256": f"{i:064x}",
            "size": 1,
            "mtime": 0.0,
            "width": 640,
            "height": 480,
            "status": "indexed",
        }
        for i in range(len(xb))
    ]
    catalog.upsert_images(rows, run)
    folder = home.shard_dir(identity.key, run)
    embeddings = []
    for start in range(0, len(xb), 100_000):
        part = xb[start : start + 100_000]
        name = shards.write_shard(folder, [], part, [], identity.to_dict(), name=f"shard-{start:09d}")
        embeddings += [
            {
                "sha256": f"{start + j:064x}",
                "model_id": model_id,
                "shard_dir": home.relative(folder),
                "shard": name,
                "row": j,
                "run_id": run,
            }
            for j in range(len(part))
        ]
    catalog.add_embeddings(embeddings)
    locations = catalog.vector_locations(model_id)
    choice = choose_index(len(xb), xb.shape[1], override=index_type, storage="memory")
    index = build.build_from_store(home, locations, xb.shape[1], choice)
    search = {"params": {"nprobe": nprobe} if index_type.startswith("IVF") else {}, "rerank": rerank}
    version = versions.write_version(
        home,
        identity,
        index,
        index_type,
        run,
        search=search,
        locations=locations,
        catalog_id=catalog.catalog_id(),
        hits=catalog.hit_rows(),
    )
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
    from core.models import load_model, parse_model_spec
    from query.text import TextEncoder
    from vistag.synth import make_tiny_model

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
    ap.add_argument(
        "--index-type", default="Flat", help="FAISS factory string (default Flat), e.g. IVF1024,PQ64x8np"
    )
    ap.add_argument(
        "--rerank",
        type=int,
        default=None,
        help="re-rank this many times k candidates with stored vectors (default: 10 for PQ, else 0)",
    )
    args = ap.parse_args()
    from query.search import Searcher

    rerank = args.rerank if args.rerank is not None else (10 if "PQ" in args.index_type else 0)
    rng = np.random.default_rng(0)
    xb = clustered(args.vectors, args.dim, 100, rng)
    xq = clustered(args.queries, args.dim, 100, rng)
    with tempfile.TemporaryDirectory() as tmp:
        home, catalog = build_home(Path(tmp), xb, args.index_type, rerank)
        searcher = Searcher(home, catalog)
        searcher.search_vectors(xq[:1], args.k)  # load the index once
        index = searcher._index
        raw = per_query_ms(lambda q: index.search(q, args.k * max(rerank, 1)), xq)
        full = per_query_ms(lambda q: searcher.search_vectors(q, args.k), xq)
        hits = searcher.search_vectors(xq[:1], args.k)[0]
        assert len(hits) == args.k and hits[0].uri.startswith("/archive/")
        by_catalog = None
        if rerank:  # the same searches fetching candidates through the catalog (versions without a table)
            searcher._vectors = None
            by_catalog = per_query_ms(lambda q: searcher.search_vectors(q, args.k), xq)
            assert [h.id for h in searcher.search_vectors(xq[:1], args.k)[0]] == [h.id for h in hits]
    p50 = statistics.median
    print(
        f"{args.vectors} vectors x {args.dim}-d, {args.index_type} inner product, k={args.k}, {args.queries} queries"
        + (f", re-rank {rerank} x k candidates" if rerank else "")
    )
    print(
        f"raw FAISS search          : p50 {p50(raw):7.3f} ms   max {max(raw):7.3f} ms"
        + (f"  ({args.k * rerank} candidates)" if rerank else "")
    )
    print(
        f"vistag search (+catalog)  : p50 {p50(full):7.3f} ms   max {max(full):7.3f} ms"
        + ("  (re-ranked from the version's vector table)" if rerank else "")
    )
    print(f"ratio vistag / raw (p50)  : {p50(full) / p50(raw):7.2f}")
    if by_catalog is not None:
        print(
            f"re-rank via catalog SQL   : p50 {p50(by_catalog):7.3f} ms   ratio to raw {p50(by_catalog) / p50(raw):7.2f}"
        )
    print(f"text encoding, tiny model : {text_encode_ms():7.3f} ms per query (model-dependent)")


if __name__ == "__main__":
    main()
