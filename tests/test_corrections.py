"""People's corrections end to end: confirm, reject, CSV import, keywords, listing, withdrawing and
review through the CLI on a generated corpus indexed with the tiny model; corrections follow the
content through a move, a copy and re-indexing; every input is checked before anything is written;
the HTTP routes need the write token; the review's choice on exact small score tables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from devkit.http import http_request
from query.calibration import Calibration
from query.review import Candidates, select, top_entries
from query.scoring import Scored
from tests.helpers import TOKEN, assert_error, thread_server
from vistag.synth import write_corpus

LABELS = ["red", "blue", "circle", "square"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path]:
    """(home, photos): 9 generated pictures, two carrying keywords (when exiftool is installed),
    indexed and tagged with LABELS; shared by this module: tests copy the home before writing."""
    from vistag import Archive

    root = tmp_path_factory.mktemp("corrections")
    corpus = write_corpus(root / "photos", n=6)
    exiftool = shutil.which("exiftool")
    jpegs = [p for p in corpus.good if p.suffix == ".jpg"]
    if exiftool:
        for path, words in zip(jpegs, (["Red", "Sky"], ["circle"]), strict=False):
            args = [f"-Keywords={w}" for w in words]
            subprocess.run([exiftool, "-q", "-overwrite_original", *args, str(path)], check=True)
    with Archive(root / "home") as archive:
        archive.index([corpus.root], model=tiny_model, batch_size=8)
        archive.tag(LABELS, top=3)
    return root / "home", corpus.root


@pytest.fixture
def home(made: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(made[0], tmp_path / "home"))


def indexed(home: Path) -> list[dict]:
    from vistag import Archive

    with Archive(home) as archive:
        return archive.catalog.images()


def listed(cli, home: Path, *options: object) -> list[dict]:
    out = cli("corrections", "--home", home, "--json", *options)
    assert out.code == 0, out.err
    return out.json()


def test_confirm_reject_list_and_withdraw(cli, home):
    a, b, c = indexed(home)[:3]
    out = cli("confirm", a["uri"], b["id"], "--label", "red", "--home", home, "--json")
    assert out.code == 0, out.err
    first = out.json()
    assert [(r["image"], r["state"], r["verdict"], r["source"]) for r in first] == [
        (a["id"], "added", "yes", "person"),
        (b["id"], "added", "yes", "person"),
    ]
    again = cli("confirm", a["id"], "--label", "RED", "--home", home, "--json").json()
    assert (again[0]["id"], again[0]["state"]) == (first[0]["id"], "unchanged")  # any case: the same label
    changed = cli("reject", f"file://{a['uri']}", c["id"], "--label", "red", "--home", home, "--json").json()
    assert [r["state"] for r in changed] == ["replaced", "added"]
    assert cli("confirm", c["id"], "--label", "circle", "--home", home).code == 0

    active = listed(cli, home)
    assert [(r["label"], r["verdict"], [i["id"] for i in r["images"]]) for r in active] == [
        ("circle", "yes", [c["id"]]),
        ("red", "no", [c["id"]]),
        ("red", "no", [a["id"]]),
        ("red", "yes", [b["id"]]),
    ]
    assert len(listed(cli, home, "--all")) == 5 and len(listed(cli, home, "-n", 2)) == 2
    assert {r["label"] for r in listed(cli, home, "--label", "Red")} == {"red"}

    text = cli("corrections", "--home", home)
    assert text.code == 0 and a["uri"] in text.out and "circle" in text.out

    gone = cli("corrections", "--withdraw", active[0]["id"], "--home", home, "--json").json()
    assert gone == {"withdrawn": [active[0]["id"]], "already": []}
    assert [r["id"] for r in listed(cli, home)] == [r["id"] for r in active[1:]]
    twice = cli("corrections", "--withdraw", active[0]["id"], "--home", home, "--json").json()
    assert twice == {"withdrawn": [], "already": [active[0]["id"]]}


def test_a_busy_catalog_is_a_one_line_error_and_nothing_is_written(cli, home, monkeypatch):
    """Another process holding SQLite's write lock longer than the busy timeout (a long index
    transaction): confirm and withdraw fail with exit 5 and a sentence, not a database traceback."""
    import sqlite3

    from indexer import database

    a = indexed(home)[0]
    assert cli("confirm", a["id"], "--label", "red", "--home", home).code == 0
    monkeypatch.setattr(database, "BUSY_TIMEOUT_S", 0.2)
    other = sqlite3.connect(home / "catalog.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock, as an index run's transaction holds it
    try:
        busy = cli("reject", a["id"], "--label", "red", "--home", home)
        assert busy.code == 5 and "catalog is busy" in busy.err and "Traceback" not in busy.err, busy.err
        assert len(busy.err.strip().splitlines()) == 1
        withdraw = cli("corrections", "--withdraw", 1, "--home", home)
        assert withdraw.code == 5 and "cannot write withdrawals" in withdraw.err
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert [(r["label"], r["verdict"]) for r in listed(cli, home)] == [("red", "yes")]


def test_every_input_is_checked_before_anything_is_written(cli, home, made, tmp_path):
    good = indexed(home)[0]
    stray = tmp_path / "not-indexed.jpg"
    shutil.copy(good["uri"], stray)
    failed = made[1] / "truncated.jpg"  # a bad file of the corpus: recorded as failed

    def refused(code: int, *args: object) -> str:
        out = cli(*args, "--home", home)
        assert out.code == code, (args, out.code, out.err)
        assert out.err.startswith("vistag: error: ") and len(out.err.strip().splitlines()) == 1
        return out.err

    assert "not in the catalog" in refused(4, "confirm", good["id"], stray, "--label", "red")
    assert "not indexed" in refused(4, "reject", good["id"], failed, "--label", "red")
    refused(4, "confirm", 999999, "--label", "red")
    refused(2, "confirm", good["id"])  # no label
    refused(2, "confirm", good["id"], "--label", "  ")
    refused(2, "confirm", good["id"], "--label", "red", "--from-csv", "x.csv")  # two modes
    refused(2, "confirm", "--from-keywords")  # no labels
    refused(2, "confirm", "--from-keywords", "--labels", tmp_path / "missing.txt")
    refused(2, "confirm", "--from-csv", tmp_path / "missing.csv")

    table = tmp_path / "bad.csv"
    table.write_text(f"uri,label,verdict\n{good['uri']},red,yes\n{good['id']},blue,maybe\n")
    assert f"{table} line 3" in refused(2, "confirm", "--from-csv", table)
    table.write_text(f"{good['uri']},red\n{stray},blue\n")
    assert f"{table} line 2" in refused(2, "confirm", "--from-csv", table)
    table.write_text(f"{good['uri']}\n")
    assert f"{table} line 1" in refused(2, "confirm", "--from-csv", table)

    refused(4, "corrections", "--withdraw", 12345)
    refused(2, "review", "--labels", tmp_path / "missing.txt")
    assert listed(cli, home, "--all") == []  # nothing was written by any of them


def test_csv_import_takes_ids_relative_paths_and_verdicts(cli, home, made, tmp_path):
    images = indexed(home)
    a, b, c = images[:3]
    table = tmp_path / "table" / "truth.csv"  # relative paths are from the CSV's folder
    table.parent.mkdir()
    table.write_text(
        "uri,label,verdict\n"
        f"{os.path.relpath(a['uri'], table.parent)},circle\n"
        f"{b['id']},square,no\n"
        "# a comment\n\n"
        f"{c['uri']},red,YES\n"
    )
    out = cli("confirm", "--from-csv", table, "--home", home, "--json")
    assert out.code == 0, out.err
    assert [(r["image"], r["label"], r["verdict"]) for r in out.json()] == [
        (a["id"], "circle", "yes"),
        (b["id"], "square", "no"),
        (c["id"], "red", "yes"),
    ]
    assert len(listed(cli, home)) == 3


@pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool writes the keywords")
def test_keywords_become_confirmed_corrections_and_a_persons_stay(cli, home):
    by_name = {Path(r["uri"]).name: r for r in indexed(home)}
    jpegs = sorted(n for n in by_name if n.endswith(".jpg"))
    red, circle = by_name[jpegs[0]], by_name[jpegs[1]]
    assert cli("reject", circle["id"], "--label", "circle", "--home", home).code == 0
    out = cli("confirm", "--from-keywords", "--labels", "red,circle,square", "--home", home, "--json")
    assert out.code == 0, out.err
    assert [(r["image"], r["label"], r["source"]) for r in out.json()] == [(red["id"], "red", "keywords")]
    active = {(r["label"], r["verdict"], r["source"]) for r in listed(cli, home)}
    assert active == {("red", "yes", "keywords"), ("circle", "no", "person")}
    none = cli("confirm", "--from-keywords", "--labels", "square", "--home", home)
    assert none.code == 2 and "no indexed image" in none.err


def test_a_correction_follows_its_content_through_a_move_a_copy_and_reindexing(cli, tiny_model, tmp_path):
    from vistag import Archive

    corpus = write_corpus(tmp_path / "photos", n=4)
    home = tmp_path / "home"
    index = ("index", corpus.root, "--home", home, "--model", tiny_model, "--batch-size", 8)
    assert cli(*index).code == 0
    first = corpus.good[0]
    assert cli("confirm", first, "--label", "circle", "--home", home).code == 0
    assert cli("reject", corpus.good[1], "--label", "circle", "--home", home).code == 0

    moved = corpus.root / "elsewhere" / f"moved{first.suffix}"
    moved.parent.mkdir()
    first.rename(moved)
    copy = corpus.root / "copy" / first.name
    copy.parent.mkdir()
    shutil.copy(moved, copy)
    assert cli(*index).code == 0

    rows = {r["verdict"]: r for r in listed(cli, home)}
    now = {r["uri"]: r["id"] for r in indexed(home)}
    assert str(first) not in now and rows["yes"]["uri"] == str(first)  # where it was when corrected
    assert sorted(i["uri"] for i in rows["yes"]["images"]) == sorted([str(copy), str(moved)])
    with Archive(home) as archive:
        ids, cols, verdicts = archive.catalog.correction_pairs(["circle"])
    expected = sorted([(now[str(moved)], True), (now[str(copy)], True), (now[str(corpus.good[1])], False)])
    assert sorted(zip(ids.tolist(), verdicts.tolist(), strict=True)) == expected and set(cols) == {0}


def test_review_lists_uncertain_images_once_each_and_skips_corrected_ones(cli, home):
    out = cli("review", "-n", 4, "--home", home, "--json")
    assert out.code == 0, out.err
    items = out.json()
    assert len(items) == 4 and len({i["id"] for i in items}) == 4
    assert len({i["label"] for i in items}) == 4  # round robin: one per label first
    assert all(0 <= i["rank"] < 3 and 0 <= i["confidence"] <= 1 for i in items)
    first = items[0]
    assert first["hint"]["confirm"] == f"vistag confirm {first['id']} --label {first['label']} --home={home}"
    assert cli(*first["hint"]["reject"].split()[1:]).code == 0  # the hint runs as it is
    after = cli("review", "-n", 50, "--labels", ",".join(LABELS), "--home", home, "--json").json()
    assert (first["id"], first["label"]) not in {(i["id"], i["label"]) for i in after}
    assert cli("review", "-n", 2, "--method", "zlap", "--home", home).code == 0

    run = cli("runs", "--home", home, "--json").json()[0]
    assert cli("untag", run["id"], "--home", home).code == 0
    none = cli("review", "--home", home)
    assert none.code == 4 and "no tag run" in none.err


# -- the review's choice, on score tables small enough to work out by hand --
def candidates(rows: list[tuple[int, int, float, int]]) -> Candidates:
    ids, cols, conf, ranks = zip(*rows, strict=True)
    return Candidates(np.array(ids), np.array(cols), np.array(conf, float), np.array(ranks))


def picks(found: Candidates, corrected: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    done = (np.array([c[0] for c in corrected], np.int64), np.array([c[1] for c in corrected], np.int64))
    return [(p["id"], p["col"]) for p in select(found, done, n)]


def test_select_takes_labels_in_turn_most_uncertain_first_each_image_once():
    found = candidates(
        [
            (1, 0, 0.50, 0),
            (2, 0, 0.45, 1),
            (3, 0, 0.90, 0),
            (1, 1, 0.51, 1),  # image 1 is taken by label 0 already
            (4, 1, 0.30, 0),
            (5, 1, 0.62, 2),
            (6, 2, 0.99, 0),
        ]
    )
    assert picks(found, [], 10) == [(1, 0), (5, 1), (6, 2), (2, 0), (4, 1), (3, 0)]
    assert picks(found, [], 2) == [(1, 0), (5, 1)]
    # corrected pairs, not images; label 1's next entry (0.51) is nearer 0.5 than label 0's (0.45)
    assert picks(found, [(1, 0), (4, 1)], 3) == [(1, 1), (2, 0), (6, 2)]
    unsure_last = candidates([(1, 0, 0.95, 0), (2, 1, 0.9, 0), (3, 2, 0.49, 0), (4, 3, 0.55, 1)])
    assert picks(unsure_last, [], 2) == [(3, 2), (4, 3)]  # the most uncertain labels, not the first
    tie = candidates([(9, 0, 0.4, 0), (7, 0, 0.6, 0)])
    assert picks(tie, [], 1) == [(7, 0)]  # equally unsure: the lower id
    with pytest.raises(Exception, match="at least 1"):
        select(found, (np.zeros(0, np.int64),) * 2, 0)


def test_top_entries_are_each_images_three_best_labels_with_their_confidence():
    scores = np.array([[0.1, 0.4, 0.3, 0.2, 0.0], [0.5, 0.1, 0.2, 0.3, 0.4]])
    identity = Calibration(False, np.zeros(5), np.ones(5), np.ones(5), np.zeros(5))
    found = top_entries(Scored(np.array([10, 20]), scores, None, identity))
    assert found.ids.tolist() == [10, 10, 10, 20, 20, 20]
    assert found.cols.tolist() == [1, 2, 3, 0, 4, 3] and found.ranks.tolist() == [0, 1, 2] * 2
    assert np.allclose(found.confidence, 1 / (1 + np.exp(-scores[[0, 0, 0, 1, 1, 1], found.cols])))


# -- HTTP --
def test_http_corrections_need_the_token_and_round_trip(home):
    from vistag import Archive
    from vistag.http import ServiceConfig, create_app

    image = indexed(home)[0]
    body = json.dumps({"label": "square", "verdict": "no"}).encode()
    post = ("POST", f"/api/images/{image['id']}/corrections", body)
    json_type = {"Content-Type": "application/json"}
    with Archive(home) as archive, thread_server(create_app(archive, ServiceConfig())) as port:
        assert_error(http_request(port, *post, json_type | AUTH), 403)  # writes disabled
    with Archive(home) as archive:
        app = create_app(archive, ServiceConfig(write_token=TOKEN))
        with thread_server(app) as port:
            paths = http_request(port, "GET", "/openapi.json").json()["paths"]
            assert {
                "/api/images/{image_id}/corrections",
                "/api/corrections/{correction_id}",
                "/api/corrections",
            } <= set(paths)
            assert_error(http_request(port, *post, json_type), 401)
            assert_error(http_request(port, *post, json_type | {"Authorization": "Bearer wrong"}), 401)
            assert_error(http_request(port, "DELETE", "/api/corrections/1"), 401)
            bad = json.dumps({"label": "square", "verdict": "maybe"}).encode()
            assert_error(http_request(port, "POST", post[1], bad, json_type | AUTH), 400)
            assert_error(
                http_request(port, "POST", "/api/images/999999/corrections", body, json_type | AUTH), 404
            )

            added = http_request(port, *post, json_type | AUTH)
            assert added.status == 200, added.body
            made = added.json()
            assert (made["state"], made["image"], made["label"], made["verdict"]) == (
                "added",
                image["id"],
                "square",
                "no",
            )
            detail = http_request(port, "GET", f"/api/images/{image['id']}").json()
            assert [(c["id"], c["verdict"]) for c in detail["corrections"]] == [(made["id"], "no")]
            listing = http_request(port, "GET", "/api/corrections?label=SQUARE").json()["corrections"]
            assert [c["id"] for c in listing] == [made["id"]]
            assert http_request(port, "GET", "/api/corrections?label=red").json() == {"corrections": []}

            gone = http_request(port, "DELETE", f"/api/corrections/{made['id']}", None, AUTH)
            assert gone.status == 200 and gone.json() == {"id": made["id"], "withdrawn": True}
            again = http_request(port, "DELETE", f"/api/corrections/{made['id']}", None, AUTH).json()
            assert again == {"id": made["id"], "withdrawn": False}
            assert_error(http_request(port, "DELETE", "/api/corrections/4242", None, AUTH), 404)
            assert http_request(port, "GET", f"/api/images/{image['id']}").json()["corrections"] == []
