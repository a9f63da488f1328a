"""Catalog throughput: vistag's insert and lookup paths against raw bulk SQL, SQLite and PostgreSQL.

    python bench/bench_catalog.py [--rows 100000]

For each database (SQLite file; PostgreSQL when Debian's server binaries are installed, started
on loopback for the run): rows/s of ``Catalog.upsert_images`` (new rows, then updates), of
``Catalog.add_tags`` (one tag row per image, as a tag run stores them), of
``Catalog.image_states`` (the planner's full read), and of ``Catalog.images(ids)`` (search
joins, 10 ids a call); the baseline is a raw ``executemany`` insert of the same rows into a
plain table on the same database, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rows(n: int) -> list[dict]:
    return [
        {
            "uri": f"/archive/{i:08d}.jpg",
            "sha256": f"{i:064x}",
            "size": 1000 + i,
            "mtime": 1.5e9 + i,
            "width": 640,
            "height": 480,
            "status": "indexed",
        }
        for i in range(n)
    ]


def raw_insert(url: str, data: list[dict]) -> float:
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    table = sa.Table(
        "raw_images",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        *[sa.Column(c, sa.Text if c in ("uri", "sha256", "status") else sa.Float) for c in data[0]],
    )
    meta.create_all(engine)
    start = time.perf_counter()
    with engine.begin() as conn:
        for i in range(0, len(data), 5000):
            conn.execute(table.insert(), data[i : i + 5000])
    engine.dispose()
    return len(data) / (time.perf_counter() - start)


def measure(url: str, n: int) -> dict[str, float]:
    from indexer.catalog import Catalog

    data = rows(n)
    out = {"raw executemany insert": raw_insert(url, data)}
    catalog = Catalog(url)
    run = catalog.start_run("index", None)
    start = time.perf_counter()
    catalog.upsert_images(data, run)
    out["upsert_images (insert)"] = n / (time.perf_counter() - start)
    start = time.perf_counter()
    catalog.upsert_images([r | {"size": 1} for r in data[: n // 10]], run)
    out["upsert_images (update)"] = (n // 10) / (time.perf_counter() - start)
    ids = [r["id"] for r in catalog.images(status=None)]
    label = catalog.label_ids(["bench"])[0]
    tags = [
        {
            "image_id": i,
            "label_id": label,
            "score": 0.5,
            "confidence": 0.9,
            "rank": 0,
            "method": "zeroshot",
            "run_id": run,
        }
        for i in ids
    ]
    start = time.perf_counter()
    catalog.add_tags(tags)
    out["add_tags (insert)"] = len(tags) / (time.perf_counter() - start)
    start = time.perf_counter()
    states = catalog.image_states()
    out["image_states (plan read)"] = len(states) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, 20_000, 10):
        catalog.images(list(range(i + 1, i + 11)))
    out["images(ids) x10 (search join)"] = 20_000 / (time.perf_counter() - start)
    catalog.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    from devkit import postgres

    with tempfile.TemporaryDirectory() as tmp:
        results = {"SQLite": measure(f"sqlite:///{tmp}/catalog.db", args.rows)}
        if postgres.available():
            with postgres.postgres_server() as url:
                results["PostgreSQL"] = measure(url, args.rows)
    for db, figures in results.items():
        base = figures["raw executemany insert"]
        print(f"{db} ({args.rows} rows)")
        for name, rate in figures.items():
            print(f"  {name:32} {rate:12,.0f} rows/s   ratio to raw insert {rate / base:6.2f}")


if __name__ == "__main__":
    main()
