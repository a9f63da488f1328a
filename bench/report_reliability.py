"""Reliability report: hostile files, injected faults, and the HTTP service under load during a
re-index. Prints the counts (the baseline of each part is "everything survived").

    python bench/report_reliability.py [--clients 4] [--seconds 20]

1. Hostile archive (vistag/synth/hostile.py) plus a generated good corpus: files tried, images indexed,
   failures recorded with stage and reason, and a re-run that retries nothing.
2. Faults: a real `vistag index` process killed at each crash point, then re-run; counts runs
   whose final catalog and index equal an uninterrupted run's.
3. Load: `vistag serve` on loopback answering concurrent clients (bounded in count and time)
   while a re-index publishes a new version; requests made, errors, versions seen.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
POINTS = ("planned", "shard-written:2", "shard-applied:2", "deleted", "version-written", "published")


def _vistag(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("vistag"))
    return subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=600, env=os.environ | (env or {})
    )


def hostile(tmp: Path, model: str) -> dict[str, int]:
    from vistag import Archive
    from vistag.synth import write_corpus
    from vistag.synth.hostile import make_hostile

    files = make_hostile(tmp / "archive" / "hostile")
    corpus = write_corpus(tmp / "archive" / "corpus", n=40)
    tried = len(files) + len(corpus.good) + len(corpus.bad)
    with Archive(tmp / "home-hostile") as archive:
        first = archive.index([tmp / "archive"], model=model)
        second = archive.index([tmp / "archive"], model=model)
        failures = archive.failures()
    return {
        "files tried": tried,
        "images indexed": first.embedded + first.reused,
        "failures recorded": len(failures),
        "failures with stage and reason": sum(bool(f["stage"] and f["reason"]) for f in failures),
        "expected good": len(corpus.good) + sum(e == "index" for _, e in files),
        "re-run: files retried": second.embedded + second.failed,
    }


def _snapshot(home: Path) -> tuple:
    from indexer import versions
    from vistag import Archive

    with Archive(home) as archive:
        images = sorted((r["uri"], r["sha256"]) for r in archive.catalog.images())
        return images, versions.current_version(archive.home).load().ntotal


def faults(tmp: Path, model: str) -> dict[str, int]:
    from vistag.synth import write_corpus

    corpus = write_corpus(tmp / "faults-corpus", n=16)
    base = ["index", corpus.root, "--model", model, "--shard-size", 5]
    _vistag(*base, "--home", tmp / "ref")
    reference = _snapshot(tmp / "ref")
    killed = survived = 0
    for point in POINTS:
        home = tmp / f"crash-{point.replace(':', '-')}"
        killed += _vistag(*base, "--home", home, env={"VISTAG_CRASH_AT": point}).returncode == 137
        survived += _vistag(*base, "--home", home).returncode == 0 and _snapshot(home) == reference
    return {
        "crash points": len(POINTS),
        "processes killed": killed,
        "re-runs equal to uninterrupted": survived,
    }


def load(tmp: Path, model: str, clients: int, seconds: float) -> dict[str, int]:
    from devkit.http import free_port, http_request
    from vistag.synth import write_corpus

    corpus = write_corpus(tmp / "load-corpus", n=60)
    home = tmp / "home-load"
    _vistag("index", corpus.root, "--home", home, "--model", model)
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("vistag")), "serve", "--home", str(home), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    counts = {"requests": 0, "errors": 0}
    seen: set[int] = set()
    lock, stop = threading.Lock(), threading.Event()
    try:
        _wait(port)

        def client() -> None:
            while not stop.is_set():
                reply = http_request(port, "GET", "/api/search?q=a%20red%20circle&k=100", timeout=30)
                with lock:
                    counts["requests"] += 1
                    counts["errors"] += reply.status != 200
                    if reply.status == 200:
                        seen.add(len(reply.json()["hits"]))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        write_corpus(tmp / "load-corpus" / "more", n=10, seed=5)
        reindex = _vistag("index", corpus.root, "--home", home, "--model", model).returncode
        time.sleep(max(0.0, seconds / 2))
        stop.set()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return counts | {"re-index exit code": reindex, "distinct result counts seen": len(seen)}


def _wait(port: int) -> None:
    from devkit.http import http_request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if http_request(port, "GET", "/healthz", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    from vistag.synth import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = "local-dir:" + str(make_tiny_model(tmp / "model"))
        sections = {
            "hostile inputs": hostile(tmp, model),
            "faults injected": faults(tmp, model),
            "HTTP load during a re-index": load(tmp, model, args.clients, args.seconds),
        }
    for title, figures in sections.items():
        print(title)
        for name, value in figures.items():
            print(f"  {name:34} {value}")


if __name__ == "__main__":
    main()
