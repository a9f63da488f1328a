"""End to end through the CLI on a generated corpus with bad files mixed in."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from indexer import schema


def test_index_search_similar_tag_export(cli, corpus, tiny_model, tmp_path):
    home = tmp_path / "home"
    n_good, n_bad = len(corpus.good), len(corpus.bad)

    res = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--batch-size", 8, "--json")
    assert res.code == 0, res.err
    result = res.json()
    assert result["embedded"] == n_good and result["failed"] == n_bad
    assert result["index_count"] == n_good

    status = cli("status", "--home", home, "--json").json()
    assert (status["indexed"], status["failed"]) == (n_good, n_bad)
    assert status["model"]["model"] == tiny_model and status["model"]["embed_dim"] == 32
    assert status["index"]["type"] == "Flat" and status["index"]["count"] == n_good

    failures = cli("failures", "--home", home, "--json").json()
    assert sorted(f["uri"] for f in failures) == sorted(str(p) for p in corpus.bad)
    assert all(f["stage"] == "decode" and f["reason"] for f in failures)

    hits = cli("search", "a red circle", "-k", 5, "--home", home, "--json").json()
    good_uris = {str(p) for p in corpus.good}
    assert len(hits) == 5 and {h["uri"] for h in hits} <= good_uris
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert {"id", "uri", "score"} <= set(hits[0])

    target = corpus.good[3]
    similar = cli("similar", target, "-k", 3, "--home", home, "--json").json()
    assert similar[0]["uri"] == str(target) and abs(similar[0]["score"] - 1.0) < 1e-4
    by_id = cli("similar", similar[0]["id"], "-k", 3, "--home", home, "--json").json()
    assert by_id == similar

    res = cli("tag", "--labels", "red circle,blue square,green star", "--top", 2, "--home", home, "--json")
    assert res.code == 0, res.err
    tags = res.json()
    assert len(tags) == 2 * n_good
    for uri in good_uris:
        mine = [t for t in tags if t["uri"] == uri]
        assert len(mine) == 2 and mine[0]["score"] >= mine[1]["score"]
    engine = sa.create_engine(f"sqlite:///{home / 'catalog.db'}")
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(schema.tags)).scalar()
    assert stored == 3 * n_good  # one row per image and label asked

    exported = cli("export", "--format", "json", "--home", home).json()
    indexed = [r for r in exported if r["status"] == "indexed"]
    assert len(indexed) == n_good and all(len(r["tags"]) == 3 for r in indexed)
    csv_text = cli("export", "--format", "csv", "--home", home).out
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(rows) == len(exported)
    for row, obj in zip(rows, exported, strict=True):
        assert row["uri"] == obj["uri"] and int(row["id"]) == obj["id"]
        assert json.loads(row["tags"]) == obj["tags"]

    again = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--json").json()
    assert again["embedded"] == 0 and again["plan"]["unchanged"] == n_good + n_bad
    assert again["index_version"] is None  # nothing changed: nothing rebuilt
    runs = cli("runs", "--home", home, "--json").json()
    assert [r["kind"] for r in runs[:3]] == ["index", "tag", "index"] and runs[0]["embedded"] == 0


def test_dry_run_prints_plan_and_changes_nothing(cli, corpus, tiny_model, tmp_path):
    home = tmp_path / "home"
    res = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--dry-run")
    assert res.code == 0
    assert f"{len(corpus.good) + len(corpus.bad)} new" in res.out
    assert cli("status", "--home", home, "--json").json()["indexed"] == 0


def test_errors_are_one_line_with_exit_codes(cli, tmp_path, tiny_model):
    res = cli("index", tmp_path / "nope", "--home", tmp_path / "h", "--model", tiny_model)
    assert res.code == 2 and res.err.count("\n") == 1 and "does not exist" in res.err
    res = cli("search", "cat", "--home", tmp_path / "h2")
    assert res.code == 4 and "vistag index" in res.err and res.err.count("\n") == 1
    res = cli("index", tmp_path, "--home", tmp_path / "h3", "--model", "local-dir:/no/such/model")
    assert res.code == 3 and "open_clip_config.json" in res.err
    res = cli("index", tmp_path, "--home", tmp_path / "h3", "--model", "NoSuchNet-9")
    assert res.code == 3 and "unknown OpenCLIP model" in res.err


def test_search_rejects_bad_k(cli, indexed_home):
    home, _ = indexed_home
    res = cli("search", "x", "-k", 0, "--home", home)
    assert res.code == 2 and "k must be" in res.err


def test_console_script_and_help(tmp_path):
    """The installed ``vistag`` entry point runs as a real process."""
    exe = Path(sys.executable).with_name("vistag")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    for command in ("index", "search", "similar", "tag", "export", "status"):
        assert command in out
    env = os.environ | {"VISTAG_HOME": str(tmp_path / "envhome")}
    res = subprocess.run([str(exe), "status", "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert (
        res.returncode == 4 and f"no archive in {tmp_path / 'envhome'}" in res.stderr
    )  # read, never created
    assert not (tmp_path / "envhome").exists()
