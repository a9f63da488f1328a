"""HTTP search latency and throughput: ``vistag serve`` on loopback against in-process search.

    python bench/bench_serve.py [--vectors 100000] [--dim 512] [--clients 4] [--requests 400] [--seconds 60]

Builds a catalog and a published index (``--index-type``, Flat by default; as vistag builds it,
with its hit table) of clustered synthetic vectors in a temporary home (as bench_search.py does),
then, on the same queries, times per query:

- raw ``index.search`` on the loaded FAISS index (the floor),
- in-process ``Searcher.search_vectors`` (FAISS search + hits from the version's hit table: the baseline),
- in-process ``Service.search_vector`` (what the endpoint runs: + filters, tags, response dict),
- the Searcher joining hits through the catalog instead (versions written before hit tables),
- ``POST /api/search/vector`` on a ``vistag serve`` process, one client, then N concurrent
  clients on keep-alive connections (bounded by --requests and --seconds).

Single-query paths are timed query by query in turn (the machine may be shared). The synthetic
index has no real model, so queries are vectors: the vector endpoint is the
service's search path without text encoding (timed by bench_search.py, model-dependent).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import build_home, clustered  # noqa: E402

START_TIMEOUT_S = 180


def percentiles(ms: list[float]) -> tuple[float, float]:
    """(p50, p99) of latencies in ms."""
    return statistics.median(ms), float(np.percentile(ms, 99))


def serve_command(home: Path, port: int) -> list[str]:
    from vistag import cli

    args = ["--home", str(home), "--port", str(port)]
    if "serve" in cli.COMMANDS:
        return [sys.executable, "-m", "vistag.cli", "serve", *args]
    return [sys.executable, "-m", "vistag.cli", "serve", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, int]:
    """A ``vistag serve`` process on ``home``, once its /healthz answers (bounded wait)."""
    port = free_port()
    proc = subprocess.Popen(serve_command(home, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit(f"server did not start within {START_TIMEOUT_S}s (exit code {proc.poll()})")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def client(port: int, bodies: list[bytes], path: str, stop_at: float, out: list[float]) -> None:
    """Send ``bodies`` in turn on one keep-alive connection until done or ``stop_at``; latencies (ms) to ``out``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for body in bodies:
        if time.monotonic() > stop_at:
            break
        start = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        out.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
    conn.close()


def load(
    port: int, bodies: list[bytes], path: str, clients: int, seconds: float
) -> tuple[list[float], float]:
    """N clients sharing ``bodies`` round-robin; (latencies ms, wall seconds)."""
    stop_at = time.monotonic() + seconds
    results: list[list[float]] = [[] for _ in range(clients)]
    threads = [
        threading.Thread(target=client, args=(port, bodies[i::clients], path, stop_at, results[i]))
        for i in range(clients)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return [ms for r in results for ms in r], time.perf_counter() - start


def single_query_paths(home, port: int, k: int) -> dict[str, Callable[[np.ndarray], object]]:
    """Name -> function of one query (1, D): in-process Searcher (the baseline), in-process Service
    (the endpoint's work), one HTTP request, the Searcher joining hits through the catalog (versions
    written before hit tables), and the Searcher with FAISS's default OpenMP threads."""
    import faiss

    from indexer.catalog import ImageFilter
    from query.search import Searcher
    from vistag import Archive
    from vistag.http.config import FAISS_THREADS, ServiceConfig
    from vistag.http.service import Service

    archive = Archive(home.root)
    service = Service(archive, ServiceConfig())
    searcher = service.searcher
    dim = searcher.version().manifest["dim"]
    searcher.search_vectors(np.zeros((1, dim), np.float32), k)  # load once
    by_catalog = Searcher(home, archive.catalog)
    by_catalog.search_vectors(np.zeros((1, dim), np.float32), k)
    by_catalog._hits = None  # noqa: SLF001 - as a version without a hit table
    default_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(FAISS_THREADS)  # as the server runs its searches
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def http_one(q: np.ndarray) -> None:
        conn.request(
            "POST",
            f"/api/search/vector?k={k}",
            body=json.dumps({"vector": q[0].tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        if response.status != 200 or not json.loads(response.read())["hits"]:
            raise RuntimeError(f"HTTP {response.status}")

    def default_threads_search(q: np.ndarray) -> None:
        faiss.omp_set_num_threads(default_threads)
        searcher.search_vectors(q, k)
        faiss.omp_set_num_threads(FAISS_THREADS)

    index = searcher._index  # noqa: SLF001 - the loaded FAISS index, for the raw baseline
    return {
        "raw FAISS index.search": lambda q: index.search(q, k),
        "in-process Searcher.search_vectors": lambda q: searcher.search_vectors(q, k),
        "in-process Service.search_vector": lambda q: service.search_vector(q[0].tolist(), k, ImageFilter()),
        "HTTP /api/search/vector, 1 client": http_one,
        "in-process, hits joined by the catalog": lambda q: by_catalog.search_vectors(q, k),
        "in-process, FAISS default threads": default_threads_search,
    }


def reuse_or_build(root: Path, xb: np.ndarray, args: argparse.Namespace) -> Any:
    """The home at ``root``: built there from ``xb`` unless a home built with the same options is."""
    from indexer.home import Home

    stamp = root / "bench-serve.json"
    options = {"vectors": args.vectors, "dim": args.dim, "index_type": args.index_type, "nprobe": args.nprobe}
    if stamp.exists() and json.loads(stamp.read_text()) == options:
        print(f"reusing the home in {root}")
        return Home.resolve(root)
    start = time.perf_counter()
    home, _ = build_home(root, xb, args.index_type, nprobe=args.nprobe)
    stamp.write_text(json.dumps(options))
    print(
        f"built {args.vectors} x {args.dim}-d {args.index_type} index + catalog in {time.perf_counter() - start:.1f}s"
    )
    return home


def interleaved(paths: dict[str, Callable[[np.ndarray], object]], xq: np.ndarray) -> dict[str, list[float]]:
    """Per-query ms of every path, query by query in turn, so that load from other processes on the
    machine falls on all of them alike."""
    out: dict[str, list[float]] = {name: [] for name in paths}
    for q in xq:
        for name, fn in paths.items():
            start = time.perf_counter()
            fn(q[None, :])
            out[name].append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200, help="distinct query vectors (default 200)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    ap.add_argument("--requests", type=int, default=400, help="requests of the concurrent run (default 400)")
    ap.add_argument("--seconds", type=float, default=60, help="time cap of each HTTP run (default 60)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument(
        "--index-type",
        default="Flat",
        help="FAISS factory string, as vistag builds it (default Flat), e.g. IVF4096,SQ8",
    )
    ap.add_argument("--nprobe", type=int, default=16, help="lists searched by IVF types (default 16)")
    ap.add_argument(
        "--home",
        type=Path,
        help="build the home here and keep it; a home built before with the "
        "same options is reused (default: a temporary one)",
    )
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    xb = clustered(args.vectors, args.dim, 100, rng)
    xq = clustered(args.queries, args.dim, 100, rng)
    bodies = [json.dumps({"vector": q.tolist()}).encode() for q in xq]
    path = f"/api/search/vector?k={args.k}"
    with tempfile.TemporaryDirectory() as tmp:
        home = reuse_or_build(args.home or Path(tmp) / "home", xb, args)
        proc, port = start_server(home.root)
        try:
            load(port, bodies[:20], path, 1, args.seconds)  # warm up the server
            rows = interleaved(single_query_paths(home, port, args.k), xq)
            many_bodies = (bodies * (args.requests // len(bodies) + 1))[: args.requests]
            many, wall = load(port, many_bodies, path, args.clients, args.seconds)
        finally:
            stop_server(proc)
    rows[f"HTTP, {args.clients} concurrent clients"] = many
    report(args, rows, wall)


def report(args: argparse.Namespace, rows: dict[str, list[float]], wall: float) -> None:
    """Print p50/p99 of each row, ratios against the in-process baseline, concurrent throughput."""
    kind = args.index_type + (f", nprobe {args.nprobe}" if args.index_type.startswith("IVF") else "")
    print(
        f"{args.vectors} vectors x {args.dim}-d, {kind}, k={args.k}; {os.cpu_count()} CPU cores shared by "
        "server and clients; 1 FAISS thread per search unless said"
    )
    for name, ms in rows.items():
        p50, p99 = percentiles(ms)
        print(f"{name:<38}: p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  ({len(ms)} queries)")
    faiss_raw, raw, one, many = (
        rows[name] for name in (*list(rows)[:2], "HTTP /api/search/vector, 1 client", list(rows)[-1])
    )
    base = percentiles(raw)[0]
    print(f"ratio in-process / raw FAISS (p50)      : {base / percentiles(faiss_raw)[0]:6.2f}")
    print(f"ratio HTTP 1 client / in-process (p50)  : {percentiles(one)[0] / base:6.2f}")
    print(f"ratio HTTP {args.clients} clients / in-process (p50) : {percentiles(many)[0] / base:6.2f}")
    print(
        f"throughput, {args.clients} clients               : {len(many) / wall:7.1f} requests/s "
        f"(in-process, one thread in turn: {1000 / base:7.1f} queries/s)"
    )


if __name__ == "__main__":
    main()
