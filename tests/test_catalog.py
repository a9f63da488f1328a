"""Catalog operations on SQLite (file and in-memory), migrations, and parameterised SQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from core.errors import CatalogError, InputError, NotFound
from core.models import ModelIdentity
from indexer import schema
from indexer.catalog import Catalog
from indexer.database import parse_db_url

IDENTITY = ModelIdentity("ViT-X", "tag", 8, {"size": 32}, "")


@pytest.fixture
def catalog(db_url):
    """The catalog on SQLite and on a real PostgreSQL server (every test here runs on both)."""
    cat = Catalog(db_url)
    yield cat
    cat.close()


def _img(uri, sha="a" * 64, **kw):
    return {
        "uri": uri,
        "sha256": sha,
        "size": 1,
        "mtime": 2.0,
        "width": 3,
        "height": 4,
        "status": "indexed",
    } | kw


def test_migrations_match_the_schema(catalog):
    with catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    assert diff == []
    Catalog(catalog.url).close()  # re-opening an up-to-date catalog is a no-op


def test_the_head_revision_is_alembics():
    """Catalogs at schema.HEAD_REVISION open without Alembic: it must be the newest migration."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from indexer.database import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == schema.HEAD_REVISION


def test_models_runs_and_images(catalog):
    mid = catalog.model_id(IDENTITY)
    assert catalog.model_id(IDENTITY) == mid and catalog.model(mid) == IDENTITY
    run = catalog.start_run("index", mid, {"inputs": ["/x"]})
    catalog.upsert_images([_img("/x/1.jpg"), _img("/x/2.jpg", "b" * 64)], run)
    catalog.upsert_images([_img("/x/1.jpg", size=99)], run)  # update, not duplicate
    rows = catalog.images()
    assert [r["uri"] for r in rows] == ["/x/1.jpg", "/x/2.jpg"] and rows[0]["size"] == 99
    assert catalog.counts() == {"indexed": 2, "failed": 0, "deleted": 0}
    assert catalog.set_status(["/x/2.jpg"], "deleted", run) == 1
    assert catalog.counts()["deleted"] == 1
    one, two = rows[0]["id"], rows[1]["id"]
    assert [r["id"] for r in catalog.images([two, one])] == [one]  # by id: indexed ones only
    assert [r["id"] for r in catalog.images([two, one], status=None)] == [two, one]  # in the order asked
    assert [r["id"] for r in catalog.images([two, one], status="deleted")] == [two]
    catalog.finish_run(run, "ok", {"embedded": 2, "failed": 0})
    (latest,) = catalog.runs()
    assert latest["status"] == "ok" and latest["embedded"] == 2 and latest["finished"] >= latest["started"]
    assert catalog.image("/x/1.jpg")["id"] == rows[0]["id"]
    with pytest.raises(NotFound):
        catalog.image(12345)


def test_embeddings_are_keyed_by_content_and_model(catalog):
    mid = catalog.model_id(IDENTITY)
    other = catalog.model_id(ModelIdentity("ViT-Y", "tag", 8, {}, ""))
    run = catalog.start_run("index", mid)
    row = {"sha256": "a" * 64, "model_id": mid, "shard_dir": "s", "shard": "n", "row": 0, "run_id": run}
    assert catalog.add_embeddings([row, row | {"row": 5}]) == 1  # same content: stored once
    assert catalog.add_embeddings([row | {"model_id": other}]) == 1
    catalog.upsert_images([_img("/x/1.jpg"), _img("/x/dup.jpg")], run)
    assert [loc[0] for loc in catalog.vector_locations(mid)] == [1, 2]  # both images share the vector
    assert catalog.known_hashes(mid) == ["a" * 64]


def test_injection_strings_are_data(catalog):
    evil = "x'); DROP TABLE images; --"
    mid = catalog.model_id(IDENTITY)
    run = catalog.start_run("tag", mid)
    catalog.upsert_images([_img(f"/x/{evil}.jpg")], run)
    (label_id,) = catalog.label_ids([evil])
    catalog.add_tags(
        [{"image_id": 1, "label_id": label_id, "score": 0.5, "rank": 0, "method": "zeroshot", "run_id": run}]
    )
    catalog.finish_run(run, "ok", {})
    assert catalog.tags()[0]["label"] == evil
    assert catalog.images()[0]["uri"] == f"/x/{evil}.jpg"


def test_failed_batch_leaves_no_partial_rows(catalog):
    run = catalog.start_run("index", None)
    good, bad = _img("/x/ok.jpg"), _img("/x/bad.jpg", status=None)  # NOT NULL violation
    with pytest.raises(sa.exc.IntegrityError):
        catalog.upsert_images([good, bad], run)
    assert catalog.images(status=None) == []


def test_database_url_errors():
    with pytest.raises(InputError, match="not a database URL"):
        parse_db_url("::nonsense::")
    with pytest.raises(CatalogError):
        Catalog("sqlite:////nonexistent-dir/x/y.db")
    assert "***" in Catalog.display_url("postgresql+psycopg://u:secret@h/db")


def test_catalog_from_the_previous_schema_version_is_upgraded_with_its_data(tmp_path):
    """A catalog written at revision 0001 opens under the current code with its rows intact."""
    from tests.helpers import catalog_at_revision

    rows = [
        "INSERT INTO runs (kind, status, started, listed, new, changed, unchanged, deleted, "
        "embedded, reused, failed, params) VALUES ('tag', 'ok', 1, 0,0,0,0,0,0,0,0, '{}')",
        "INSERT INTO images (uri, status, updated) VALUES ('/a.jpg', 'indexed', 1)",
        "INSERT INTO labels (name) VALUES ('cat')",
        "INSERT INTO tags (image_id, label_id, score, rank, method, run_id) VALUES (1, 1, 0.25, 0, 'zeroshot', 1)",
    ]
    url = catalog_at_revision(tmp_path / "old.db", "0001", rows)
    catalog = Catalog(url)
    (tag,) = catalog.tags()
    assert tag["label"] == "cat" and tag["score"] == 0.25 and tag["confidence"] is None
    assert catalog.images()[0]["uri"] == "/a.jpg"
    catalog.close()


def test_bulk_writes_round_trip_and_fail_whole(catalog):
    """Batches large enough for PostgreSQL's COPY path (COPY_MIN rows and more) store exactly what
    row-by-row INSERTs store, keep column defaults, and fail as a whole with SQLAlchemy's error."""
    from indexer.database import COPY_MIN

    n = 3 * COPY_MIN
    mid = catalog.model_id(IDENTITY)
    run = catalog.start_run("index", mid)
    evil = "tab\\there\nnew line, quote ' \" and \\N"  # what COPY's text format escapes
    images = [
        _img(f"/bulk/{i:04d}{evil if i == 7 else ''}.jpg", f"{i:064x}", size=i, mtime=i + 0.5)
        for i in range(n)
    ]
    catalog.upsert_images(images, run)
    stored = catalog.images()
    assert [(r["uri"], r["sha256"], r["size"], r["mtime"]) for r in stored] == [
        (r["uri"], r["sha256"], r["size"], r["mtime"]) for r in images
    ]
    assert all(r["first_run"] == run and r["width"] == 3 for r in stored)
    rows = [
        {"sha256": f"{i:064x}", "model_id": mid, "shard_dir": "s", "shard": "x", "row": i, "run_id": run}
        for i in range(n)
    ]
    assert catalog.add_embeddings(rows + rows[:5]) == n  # duplicates of content: stored once
    assert [loc[3] for loc in catalog.vector_locations(mid)] == list(range(n))
    catalog.add_failures([{"uri": f"/bad/{i}", "stage": "decode", "reason": evil} for i in range(n)], run)
    assert len(catalog.failures()) == n and catalog.failures(1)[0]["reason"] == evil
    (label,) = catalog.label_ids(["cat"])
    tags = [
        {"image_id": r["id"], "label_id": label, "score": 0.5, "rank": 0, "method": "zeroshot", "run_id": run}
        for r in stored
    ]
    catalog.add_tags(tags)  # no "confidence": the column's default (NULL)
    got = catalog.tags(run)
    assert len(got) == n and {t["confidence"] for t in got} == {None}
    bad = [_img(f"/bulk2/{i}.jpg") for i in range(n)]
    bad[n // 2]["status"] = None  # NOT NULL violation in the middle of the batch
    with pytest.raises(sa.exc.IntegrityError):
        catalog.upsert_images(bad, run)
    assert not [r for r in catalog.images(status=None) if r["uri"].startswith("/bulk2/")]


def test_corrections_one_active_per_content_and_label_listed_by_content(catalog):
    run = catalog.start_run("index", catalog.model_id(IDENTITY))
    catalog.upsert_images([_img("/x/1.jpg"), _img("/x/copy.jpg"), _img("/x/2.jpg", "b" * 64)], run)
    a, b = "a" * 64, "b" * 64
    first = catalog.add_corrections(
        [
            {"sha256": a, "label": "Cat", "verdict": "yes", "source": "person", "uri": "/x/1.jpg"},
            {"sha256": b, "label": "cat", "verdict": "no", "source": "person"},
        ]
    )
    assert [r["state"] for r in first] == ["added", "added"]
    again = catalog.add_corrections([{"sha256": a, "label": "CAT", "verdict": "no", "source": "person"}])
    assert again[0]["state"] == "replaced"
    assert catalog.correction_states([first[0]["id"], again[0]["id"], 999]) == {
        first[0]["id"]: False,
        again[0]["id"]: True,
    }
    mine = catalog.corrections(contents=[a])
    assert [(r["id"], r["verdict"]) for r in mine] == [(again[0]["id"], "no")]
    assert [i["uri"] for i in mine[0]["images"]] == ["/x/1.jpg", "/x/copy.jpg"]  # every copy
    assert len(catalog.corrections(contents=[a], withdrawn=True)) == 2
    ids, cols, verdicts = catalog.correction_pairs(["dog", "cat"])
    assert len(ids) == 3 and set(cols.tolist()) == {1} and not verdicts.any()
    assert catalog.withdraw_corrections([again[0]["id"], first[1]["id"]]) == sorted(
        [again[0]["id"], first[1]["id"]]
    )
    assert catalog.corrections() == [] and len(catalog.correction_pairs(["cat"])[0]) == 0
