"""No silent wrong result at the edges people touch: typos, forgotten options, odd file names."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from core import uris
from core.errors import InputError, NotFound
from indexer.home import Home, normalize_db_url
from vistag import Archive
from vistag.synth import make_tiny_model

NO_MODEL = "local-dir:/no/such/model"  # any model work with it fails with exit code 3


@pytest.mark.parametrize(
    ("option", "named", "nearest"),
    [
        (["--dryrun"], "--dryrun", "--dry-run"),
        (["--batchsize=8"], "--batchsize", "--batch-size"),
        (["--modle=X"], "--modle", "--model"),
        (["--modle", "X"], "--modle", "--model"),
        (["--direct_num_worker=2"], "--direct_num_worker", "--direct_num_workers"),
    ],
)
def test_a_typo_in_an_option_is_an_error_before_any_work(cli, corpus, tmp_path, option, named, nearest):
    out = cli("index", corpus.root, "--home", tmp_path / "home", "--model", NO_MODEL, *option)
    assert out.code == 2, out.err
    assert out.err.count("\n") == 1 and f"unknown option {named}; did you mean {nearest}?" in out.err
    assert not (tmp_path / "home" / "catalog.db").exists()


def test_beam_options_pass_and_bad_values_and_harmful_ones_are_refused(cli, corpus, tmp_path, tiny_model):
    home = tmp_path / "home"
    out = cli("index", corpus.root, "--home", home, "--model", NO_MODEL, "--direct_num_workers=abc")
    assert out.code == 2 and "invalid int value" in out.err
    out = cli("index", corpus.root, "--home", home, "--model", NO_MODEL, "--dry_run")
    assert out.code == 2 and "use --dry-run" in out.err
    out = cli("index", corpus.root, "--home", home, "--model", NO_MODEL, "--dry")  # no abbreviations
    assert out.code == 2 and "unknown option --dry;" in out.err
    out = cli(
        "index", corpus.root, "--home", home, "--model", tiny_model, "--direct_num_workers", "1", "--json"
    )
    assert out.code == 0 and out.json()["embedded"] == len(corpus.good)


def test_inputs_are_checked_before_the_model(cli, tmp_path):
    out = cli("index", tmp_path / "no-such-dir", "--home", tmp_path / "home", "--model", NO_MODEL)
    assert out.code == 2 and "does not exist" in out.err


def test_read_commands_on_a_missing_home_say_so_and_create_nothing(cli, tmp_path):
    for args in (["status"], ["search", "x"], ["runs"], ["failures"], ["export"]):
        out = cli(*args, "--home", tmp_path / "nowhere")
        assert out.code == 4 and "no archive in" in out.err, args
    assert not (tmp_path / "nowhere").exists()


def test_a_missing_label_file_is_an_error_and_long_label_lists_work(cli, home_copy):
    home, corpus = home_copy
    out = cli("tag", "--labels", "mylabels.txt", "--home", home)
    assert out.code == 2 and "label file 'mylabels.txt' does not exist" in out.err
    out = cli("tag", "--labels", "labels/animals", "--home", home)
    assert out.code == 2 and "does not exist" in out.err
    assert json.loads(cli("runs", "--json", "--home", home).out)[0]["kind"] == "index"  # no tag run started
    labels = [f"a shape number {i}" for i in range(48)]
    assert len(",".join(labels)) > 255
    out = cli("tag", "--labels", ",".join(labels), "--top", 1, "--json", "--home", home)
    assert out.code == 0, out.err
    assert len(out.json()) == len(corpus.good) and {r["label"] for r in out.json()} <= set(labels)


def test_untag_deletes_a_run_and_new_images_are_no_longer_tagged_by_it(cli, tmp_path, corpus, tiny_model):
    home = tmp_path / "home"
    assert cli("index", corpus.root, "--home", home, "--model", tiny_model).code == 0
    with Archive(home) as archive:
        kept = archive.tag(["circle", "square"]).run_id
        dropped = archive.tag(["red", "blue"]).run_id
    out = cli("untag", dropped, "--home", home)
    assert out.code == 0 and f"deleted tag run {dropped}" in out.out and "no longer applied" in out.out
    shutil.copy(corpus.good[0], corpus.root / "new-copy.jpg")
    os.utime(corpus.root / "new-copy.jpg", (5, 5))
    shutil.copy(corpus.good[1], corpus.root / "second.png")
    with Archive(home) as archive:
        result = archive.index([corpus.root])
        assert result.tag_runs == (kept,)
        assert not archive.catalog.tags(dropped)
        assert not (home / "tagruns" / f"run-{dropped:06d}").exists()
        runs = {r["id"]: r["status"] for r in archive.runs()}
        assert runs[dropped] == "deleted" and runs[kept] == "ok"
    out = cli("untag", 999, "--home", home)
    assert out.code == 4 and "no tag run 999" in out.err


def test_the_archive_remembers_its_model(cli, tmp_path, corpus, tiny_model):
    home = tmp_path / "home"
    assert cli("index", corpus.root, "--home", home, "--model", tiny_model).code == 0
    # no --model: the archive's, not the default (which would need a download and re-embed all)
    out = cli("index", corpus.root, "--home", home, "--dry-run", "--json")
    assert out.code == 0, out.err
    assert out.json()["plan"]["reembed"] == 0 and out.json()["model_change"] is None
    other = "local-dir:" + str(make_tiny_model(tmp_path / "other-model", seed=1))
    out = cli("index", corpus.root, "--home", home, "--model", other, "--dry-run")
    assert out.code == 0 and out.out.startswith("model changes from local-dir:")
    assert f"{len(corpus.good)} to re-embed for this model" in out.out
    out = cli("index", corpus.root, "--home", home, "--json")
    assert out.code == 0 and out.json()["embedded"] == 0 and out.json()["index_version"] is None


def test_the_home_remembers_its_database(cli, tmp_path, corpus, tiny_model, monkeypatch):
    home, db = tmp_path / "home", tmp_path / "elsewhere" / "cat.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    assert cli("index", corpus.root, "--home", home, "--model", tiny_model, "--db", url).code == 0
    assert not (home / "catalog.db").exists()
    status = json.loads(cli("status", "--json", "--home", home).out)  # --db forgotten
    assert status["indexed"] == len(corpus.good) and status["database"] == url
    assert cli("search", "a red circle", "--home", home).out.count("\n") == 10
    out = cli("status", "--home", home, "--db", f"sqlite:///{tmp_path / 'typo.db'}")
    assert out.code == 2 and f"this home's catalog is {url}" in out.err
    assert not (tmp_path / "typo.db").exists()
    monkeypatch.setenv("VISTAG_DB", f"sqlite:///{tmp_path / 'typo.db'}")
    assert cli("status", "--home", home).code == 2  # the environment twin of --db
    monkeypatch.setenv("VISTAG_DB", url)
    assert json.loads(cli("status", "--json", "--home", home).out)["indexed"] == len(corpus.good)


def test_database_urls_are_normalised(tmp_path):
    assert normalize_db_url("postgres://u:p@h/db").startswith("postgresql+psycopg")
    assert normalize_db_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_db_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalize_db_url(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    Home.resolve(tmp_path / "h", "postgresql://u:secret@h/db").remember("ViT-B-32", "tag")
    remembered = Home.resolve(tmp_path / "h")
    assert remembered.db_url == "postgresql+psycopg://u@h/db" and remembered.settings.db_password_removed
    assert "secret" not in (tmp_path / "h" / "settings.json").read_text()
    assert oct((tmp_path / "h" / "settings.json").stat().st_mode & 0o777) == "0o600"
    assert (
        Home.resolve(tmp_path / "h", "postgres://u:secret@h/db").db_url
        == "postgresql+psycopg://u:secret@h/db"
    )
    with pytest.raises(InputError, match="a home keeps one catalog"):
        Home.resolve(tmp_path / "h", f"sqlite:///{tmp_path / 'b.db'}")
    assert Home.resolve(tmp_path / "h", f"sqlite:///{tmp_path / 'b.db'}", change_db=True).db_url.endswith(
        "b.db"
    )


def test_explain_a_failed_file_says_why(cli, indexed_home):
    home, corpus = indexed_home
    bad = next(p for p in corpus.bad if p.name == "text.png")
    out = cli("explain", bad, "--home", home)
    assert out.code == 4 and "could not be indexed (decode: not a recognised image" in out.err
    with Archive(home) as archive, pytest.raises(NotFound, match="could not be indexed"):
        archive.explain(bad)


LATIN1 = b"caf\xe9 cr\xe8me.jpg"  # a Latin-1 name, not valid UTF-8


def test_a_name_that_is_not_utf8_is_indexed_searched_and_printed(cli, tmp_path, corpus, tiny_model, db_url):
    folder = os.fsencode(str(corpus.root))
    os.rename(os.fsencode(str(corpus.good[0])), folder + b"/" + LATIN1)
    weird = os.fsdecode(folder + b"/" + LATIN1)
    home = tmp_path / "home"
    out = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--db", db_url, "--json")
    assert out.code == 0, out.err
    assert out.json()["embedded"] == len(corpus.good) and out.json()["failed"] == len(corpus.bad)
    uri = uris.from_path(weird)
    assert uri.startswith("file://") and uri.endswith("/caf%E9%20cr%E8me.jpg") and uris.to_path(uri) == weird
    out = cli("similar", weird, "-k", 1, "--home", home, "--db", db_url)
    assert out.code == 0 and uri in out.out and out.out.isascii()
    hits = cli("search", "a shape", "-k", 100, "--json", "--home", home, "--db", db_url).json()
    assert uri in {h["uri"] for h in hits}
    os.remove(weird)  # gone: the next run marks it deleted, under its folder
    out = cli("index", corpus.root, "--home", home, "--db", db_url, "--json")
    assert out.code == 0 and out.json()["deleted"] == 1


def test_control_characters_in_names_are_escaped_for_people_not_for_json(cli, tmp_path, corpus, tiny_model):
    name = "evil\x1b]0;owned\x07\x1b[2J.png"
    shutil.copy(corpus.good[0], corpus.root / name)
    home = tmp_path / "home"
    assert cli("index", corpus.root, "--home", home, "--model", tiny_model).code == 0
    out = cli("search", "a shape", "-k", 100, "--home", home)
    assert "\x1b" not in out.out and "\x07" not in out.out and "evil\\x1b]0;owned\\x07\\x1b[2J.png" in out.out
    hits = cli("search", "a shape", "-k", 100, "--json", "--home", home).json()
    assert str(corpus.root / name) in {h["uri"] for h in hits}  # JSON keeps the name exact
    out = cli("similar", str(corpus.root / Path("missing\x1b[2J.png")), "--home", home)
    assert out.code == 4 and "\x1b" not in out.err and "\\x1b[2J" in out.err


def test_change_db_moves_the_home_and_reuses_its_shards(cli, tmp_path, corpus, tiny_model):
    home, url = tmp_path / "home", f"sqlite:///{tmp_path / 'moved.db'}"
    first = cli("index", corpus.root, "--home", home, "--model", tiny_model, "--json").json()
    before = cli("search", "a red circle", "--json", "--home", home).json()
    out = cli("index", corpus.root, "--home", home, "--db", url, "--json")
    assert out.code == 2 and "--change-db" in out.err  # never by accident
    out = cli("index", corpus.root, "--home", home, "--db", url, "--change-db", "--json")
    assert out.code == 0, out.err
    assert out.json()["embedded"] == 0 and out.json()["reused"] == first["embedded"]  # hashed, not embedded
    status = cli("status", "--json", "--home", home).json()
    assert status["database"] == url and status["indexed"] == first["embedded"]
    after = cli("search", "a red circle", "--json", "--home", home).json()
    assert [(h["uri"], round(h["score"], 5)) for h in after] == [
        (h["uri"], round(h["score"], 5)) for h in before
    ]


def test_a_file_too_large_to_be_an_image_is_refused_unread(tmp_path, corpus, tiny_model):
    from core.decode import max_file_bytes

    huge = corpus.root / "huge.jpg"
    with open(huge, "wb") as fh:  # sparse: no disk used, and reading it would fill memory
        fh.truncate(max_file_bytes(1000) + 1)
    with Archive(tmp_path / "home") as archive:
        archive.index([corpus.root], model=tiny_model, max_pixels=1000)
        failure = {f["uri"]: f for f in archive.failures()}[str(huge)]
    assert (
        failure["stage"] == "read"
        and "larger than the 268435456 bytes read for an image" in failure["reason"]
    )


INDEX_AND_PEAK = """
import json, re, sys
from vistag.cli import main
code = main(["index", sys.argv[1], "--home", sys.argv[2], "--model", sys.argv[3], "--json", "--no-progress"])
peak = re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)
print(json.dumps({"code": code, "peak_mb": int(peak) // 1024}))
"""


def _index_in_a_process(folder: Path, home: Path, model: str) -> tuple[dict, dict]:
    """``vistag index`` in a fresh process: (its --json result, its exit code and peak RSS in MB)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", INDEX_AND_PEAK, str(folder), str(home), model],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.returncode == 0, run.stderr
    result, _, peak = run.stdout.strip().rpartition("\n")
    return json.loads(result), json.loads(peak)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_a_folder_of_hostile_files_is_indexed_in_bounded_memory(tmp_path, tiny_model):
    """The issue's folder: a Latin-1 name, a 600 KB scan-bomb JPEG and a 40 MP 16-bit PNG, beside
    ordinary images, cost little more memory than the ordinary images alone (measured in this run)."""
    from vistag import synth
    from vistag.synth.hostile import scan_bomb_jpeg, sixteen_bit_png

    plain, hostile = tmp_path / "plain", tmp_path / "hostile"
    synth.make_corpus(plain, 12, seed=1)
    shutil.copytree(plain, hostile)
    bomb = scan_bomb_jpeg(6000, 4000, 45_000)
    assert 550_000 < len(bomb) < 700_000
    (hostile / "scan-bomb.jpg").write_bytes(bomb)
    (hostile / "ramp-40mp-16bit.png").write_bytes(sixteen_bit_png(8000, 5000))
    shutil.copy(next(plain.glob("*.jpg")), os.fsencode(str(hostile)) + b"/caf\xe9.jpg")
    base, base_run = _index_in_a_process(plain, tmp_path / "home-plain", tiny_model)
    result, run = _index_in_a_process(hostile, tmp_path / "home-hostile", tiny_model)
    assert (base_run["code"], run["code"]) == (0, 0)
    assert result["failed"] == 1 and result["embedded"] == base["embedded"] + 2  # the PNG and café.jpg
    with Archive(tmp_path / "home-hostile") as archive:
        (failure,) = archive.failures()
        assert failure["uri"].endswith("/scan-bomb.jpg") and "scans" in failure["reason"]
        assert any(r["uri"].endswith("/caf%E9.jpg") for r in archive.export_rows())
    assert run["peak_mb"] - base_run["peak_mb"] < 300, (run, base_run)
