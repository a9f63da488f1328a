"""One row of ``bench_index.py --autofaiss-python PY``: the index autofaiss chooses, on the same data.

Runs under the other environment's Python (autofaiss needs numpy<2), so it imports only numpy,
faiss and autofaiss. Reads what ``bench_index.py`` saved in WORK (vectors, queries, exact top-10),
lets ``autofaiss.build_index`` choose, build and tune the index under MEMORY, then measures as
``bench_index.py`` does: recall@10 for text-like and image queries against exact search, and the
median latency of one query on one thread. Prints one JSON line.

    python bench/autofaiss_child.py WORK MEMORY
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from autofaiss import build_index
from procmem import reset_peak, status  # the standard library only: fine under numpy<2


def main() -> None:
    work, memory = Path(sys.argv[1]), sys.argv[2]
    xt, xi = np.load(work / "queries-text.npy"), np.load(work / "queries-image.npy")
    truth = {"text": np.load(work / "truth-text.npy"), "image": np.load(work / "truth-image.npy")}
    reset_peak()
    rss0 = status("VmRSS")
    start = time.perf_counter()
    index, infos = build_index(
        embeddings=str(work / "embeddings"),
        index_path=str(work / "autofaiss.index"),
        index_infos_path=str(work / "autofaiss.json"),
        max_index_memory_usage=memory,
        current_memory_available="16G",
        metric_type="ip",
        max_index_query_time_ms=10,
        verbose=30,
    )
    build = time.perf_counter() - start
    peak = status("VmHWM")
    recall = {}
    for kind, xq in (("text", xt), ("image", xi)):
        got = index.search(xq, 10)[1]
        recall[kind] = float(
            np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth[kind], strict=True)])
        )
    faiss.omp_set_num_threads(1)
    lat = []
    for q in xt[:100]:
        t1 = time.perf_counter()
        index.search(q[None, :], 10)
        lat.append((time.perf_counter() - t1) * 1000)
    print(
        json.dumps(
            {
                "type": "autofaiss",
                "factory": infos.get("index_key", "?"),
                "storage": "memory",
                "block": 0,
                "build_s": build,
                "rss_added_mb": (peak - rss0) / 1024,
                "anon_added_mb": float("nan"),
                "disk_mb": (work / "autofaiss.index").stat().st_size / 2**20,
                "load_mb": 0.0,
                "mapped": False,
                "p50_ms": statistics.median(lat),
                "text_recall": recall["text"],
                "image_recall": recall["image"],
                "search": infos.get("index_param", "?"),
            }
        )
    )


if __name__ == "__main__":
    main()
