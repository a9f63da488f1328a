"""The whole product on a real PostgreSQL catalog: index, search, tag, export, concurrent readers
while a writer runs, and the database-level lock that keeps a second writer out."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from core.errors import LockHeld
from devkit.postgres import fresh_database
from indexer.database import WRITER_LOCK_KEY
from vistag import Archive


@pytest.fixture
def pg_db(postgres_url):
    return fresh_database(postgres_url)


def test_cli_end_to_end_on_postgresql(cli, corpus, tiny_model, tmp_path, pg_db):
    home = tmp_path / "home"
    res = cli("index", corpus.root, "--home", home, "--db", pg_db, "--model", tiny_model, "--json")
    assert res.code == 0, res.err
    assert res.json()["embedded"] == len(corpus.good) and not (home / "catalog.db").exists()
    status = cli("status", "--home", home, "--db", pg_db, "--json").json()
    assert status["indexed"] == len(corpus.good) and status["database"].startswith("postgresql+psycopg://")
    hits = cli("similar", corpus.good[1], "-k", 2, "--home", home, "--db", pg_db, "--json").json()
    assert hits[0]["uri"] == str(corpus.good[1])
    evil = "circle'); DROP TABLE images; --"
    res = cli(
        "tag", "--labels", f"{evil},square", "--method", "zlap", "--home", home, "--db", pg_db, "--json"
    )
    assert res.code == 0, res.err
    exported = cli("export", "--home", home, "--db", pg_db).json()
    assert {t["label"] for r in exported if r["status"] == "indexed" for t in r["tags"]} == {evil, "square"}


def test_readers_during_a_write_and_the_database_writer_lock(corpus, tiny_model, tmp_path, pg_db):
    with Archive(tmp_path / "a", db=pg_db) as archive:
        archive.index([corpus.root], model=tiny_model)
    errors, answers, stop = [], [], threading.Event()

    def read():
        with Archive(tmp_path / "a", db=pg_db) as reader:
            while not stop.is_set():
                try:
                    answers.append(len(reader.similar(corpus.good[0], k=100)))
                    reader.status()
                except BaseException as err:  # noqa: BLE001
                    errors.append(err)
                    return

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        from PIL import Image

        Image.effect_noise((30, 30), 40).convert("RGB").save(corpus.root / "added.png")
        with Archive(tmp_path / "a", db=pg_db) as writer:
            writer.index([corpus.root], model=tiny_model)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]
    assert set(answers) <= {len(corpus.good), len(corpus.good) + 1} and answers

    # another machine (another home) using the same database is kept out while a writer runs
    engine = sa.create_engine(pg_db)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": WRITER_LOCK_KEY})
        with pytest.raises(LockHeld, match="catalog database"):
            Archive(tmp_path / "b", db=pg_db).index([corpus.root], model=tiny_model)
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": WRITER_LOCK_KEY})
    engine.dispose()
