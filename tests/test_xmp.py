"""vistag write-xmp: a tag run's tags in XMP sidecars, read back by exiftool (not by vistag's code).

One shapes corpus, tagged by the shipped shapes model with a vocabulary that has parents; each test
works in its own folder of it (PATH restricts write-xmp there) and names its tag run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

SHAPES_MODEL = "local-dir:" + str(Path(__file__).resolve().parent / "fixtures" / "shapes-clip")
FOLDERS = ("plain", "lightroom", "retag", "declined", "damaged", "readonly", "stem")
VOCABULARY = {
    "labels": [
        {"name": "red circle", "parent": "circle"},
        {"name": "blue circle", "parent": "circle"},
        {"name": "circle", "parent": "shape"},
        {"name": "green square", "parent": "square"},
        {"name": "yellow triangle", "parent": "shape"},
        "purple star",
    ]
}
PATHS = {  # what the vocabulary's parents mean, written out
    "red circle": "shape|circle|red circle",
    "blue circle": "shape|circle|blue circle",
    "circle": "shape|circle",
    "green square": "square|green square",
    "yellow triangle": "shape|yellow triangle",
    "purple star": "purple star",
}
PERSON_XMP = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
   xmp:Rating="4">
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">Grandma's garden</rdf:li></rdf:Alt></dc:title>
   <dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>People|Grandma</rdf:li></rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""
EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(
    EXIFTOOL is None, reason="exiftool reads the sidecars back (Debian libimage-exiftool-perl)"
)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A corpus in FOLDERS, indexed with the shapes model and tagged with VOCABULARY (run ``run``)."""
    from vistag import Archive, synth

    root = tmp_path_factory.mktemp("xmp")
    for i, folder in enumerate(FOLDERS):
        synth.make_corpus(root / "images" / folder, 6, seed=40 + i, image_sizes=(48, 64))
    latin = root / "images" / "latin"
    latin.mkdir()
    source = next((root / "images" / "plain").glob("*.jpg"))
    shutil.copyfile(source, os.fsdecode(os.fsencode(latin) + b"/caf\xe9.jpg"))  # a name that is not UTF-8
    (root / "vocab.yaml").write_text(yaml.safe_dump(VOCABULARY))
    with Archive(root / "home") as archive:
        archive.index([root / "images"], model=SHAPES_MODEL, batch_size=8)
        run = archive.tag(str(root / "vocab.yaml")).run_id
    return {"root": root, "home": root / "home", "images": root / "images", "run": run}


def _write(cli, tagged: dict, *args: object) -> dict:
    out = cli("write-xmp", "--home", tagged["home"], "--json", *args)
    assert out.code == 0, out.err
    return out.json()


def _expected(cli, tagged: dict, run: int, top: int = 5, cut: float = 0.5) -> dict[str, list[str]]:
    """image path -> the labels write-xmp must write, from `vistag export` (best first)."""
    rows = cli("export", "--home", tagged["home"], "--format", "json", "--run", run).json()
    return {
        r["uri"]: [t["label"] for t in r["tags"] if t["confidence"] >= cut][:top]
        for r in rows
        if r["status"] == "indexed"
    }


def _exiftool(path: Path) -> dict[str, list]:
    fields = ["-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-XMP-digiKam:TagsList"]
    run = subprocess.run(
        [EXIFTOOL, "-j", *fields, "-XMP-xmp:Rating", "-XMP-dc:Title", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    (found,) = json.loads(run.stdout)
    listed = {k: v if isinstance(v, list) else [v] for k, v in found.items() if k != "SourceFile"}
    return {k: listed.get(k, []) for k in ("Subject", "HierarchicalSubject", "TagsList", "Rating", "Title")}


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))


@needs_exiftool
def test_flat_and_hierarchical_keywords_originals_untouched_and_a_second_run_changes_no_byte(cli, tagged):
    folder = tagged["images"] / "plain"
    originals = _hashes(folder)
    result = _write(cli, tagged, folder, "--run", tagged["run"])
    expected = _expected(cli, tagged, tagged["run"])
    assert result["run_id"] == tagged["run"] and result["totals"]["failed"] == 0
    assert {e["uri"] for e in result["images"]} == {str(p) for p in _images(folder)}
    assert any(expected[str(p)] for p in _images(folder))  # the test writes something
    for image in _images(folder):
        labels = expected[str(image)]
        sidecar = Path(str(image) + ".xmp")  # default --sidecar-name full
        assert sidecar.exists() == bool(labels) and not image.with_suffix(".xmp").exists()
        if labels:
            got = _exiftool(sidecar)
            assert got["Subject"] == labels, image
            assert got["HierarchicalSubject"] == [PATHS[x] for x in labels]
            assert got["TagsList"] == [PATHS[x].replace("|", "/") for x in labels]
    assert {k: v for k, v in _hashes(folder).items() if not k.endswith(".xmp")} == originals
    written = _hashes(folder)
    again = _write(cli, tagged, folder, "--run", tagged["run"])
    assert {e["status"] for e in again["images"]} == {"unchanged"}
    assert _hashes(folder) == written  # byte-identical, no file added or replaced


@needs_exiftool
def test_a_lightroom_sidecar_is_updated_in_place_keeping_the_persons_keywords_and_fields(cli, tagged):
    folder = tagged["images"] / "lightroom"
    expected = _expected(cli, tagged, tagged["run"], cut=0.0)
    assert any(expected[str(p)] for p in _images(folder))
    persons = {}
    for image in _images(folder):
        mine = ["Grandma", "holiday"] + expected[str(image)][:1]  # one equals a label vistag gives
        persons[image] = mine
        items = "".join(f"<rdf:li>{k}</rdf:li>" for k in mine)
        image.with_suffix(".xmp").write_text(PERSON_XMP.format(items=items))
    originals = {k: v for k, v in _hashes(folder).items() if not k.endswith(".xmp")}
    result = _write(cli, tagged, folder, "--run", tagged["run"], "--min-confidence", 0)
    assert {e["status"] for e in result["images"]} <= {"updated", "unchanged"}
    assert any(len(e["added"].get("dc:subject", [])) >= 2 for e in result["images"])

    for image in _images(folder):
        assert not Path(str(image) + ".xmp").exists()  # the Lightroom sidecar was the one updated
        got = _exiftool(image.with_suffix(".xmp"))
        labels = expected[str(image)]
        assert got["Subject"] == persons[image] + [x for x in labels if x not in persons[image]]
        assert got["HierarchicalSubject"] == ["People|Grandma"] + [PATHS[x] for x in labels]
        assert got["Rating"] == [4] and got["Title"] == ["Grandma's garden"]
    assert {k: v for k, v in _hashes(folder).items() if not k.endswith(".xmp")} == originals


@needs_exiftool
def test_keywords_vistag_wrote_are_not_read_back_as_the_persons(cli, tagged):
    """Sidecars vistag wrote change, so the next index reads them again: the catalog's keywords (the
    truth of `eval --truth keywords`, the `--keyword` filter) keep the person's and drop vistag's."""
    from vistag import Archive

    expected = _expected(cli, tagged, tagged["run"], cut=0.0)
    out = cli("index", tagged["images"], "--home", tagged["home"], "--json")
    assert out.code == 0 and out.json()["embedded"] == 0, out.err
    with Archive(tagged["home"]) as archive:
        catalog = archive.catalog
        for image in _images(tagged["images"] / "lightroom"):
            spelt = set(catalog.keywords(catalog.image(str(image))["id"]))
            assert {"Grandma", "People|Grandma"} <= spelt  # as the person spelt them
            words = {w.lower() for w in spelt}
            labels = expected[str(image)]
            persons = {"grandma", "people|grandma", "holiday", labels[0].lower()}
            assert persons <= words
            assert not words & ({x.lower() for x in labels[1:]} | {PATHS[x].lower() for x in labels[1:]})
        plain = _images(tagged["images"] / "plain")  # sidecars of vistag's keywords only, if any
        assert any(Path(str(image) + ".xmp").exists() for image in plain)
        assert all(catalog.keywords(catalog.image(str(image))["id"]) == [] for image in plain)


def _best_label(expected: dict[str, list[str]], folder: Path) -> str:
    firsts = [expected[str(p)][0] for p in _images(folder) if expected[str(p)]]
    return max(set(firsts), key=firsts.count)


@needs_exiftool
def test_a_label_tagged_no_more_leaves_the_sidecars_but_a_persons_keyword_stays(cli, tagged, tmp_path):
    from vistag import Archive

    folder = tagged["images"] / "retag"
    expected = _expected(cli, tagged, tagged["run"])
    dropped = _best_label(expected, folder)
    images = [p for p in _images(folder) if dropped in expected[str(p)]]
    assert len(images) >= 2
    person = images[0]  # has the keyword before vistag's first write: it is the person's
    person.with_suffix(".xmp").write_text(PERSON_XMP.format(items=f"<rdf:li>{dropped}</rdf:li>"))
    _write(cli, tagged, folder, "--run", tagged["run"])
    for image in images[1:]:
        assert dropped in _exiftool(Path(str(image) + ".xmp"))["Subject"]
    kept = [x for x in VOCABULARY["labels"] if (x if isinstance(x, str) else x["name"]) != dropped]
    vocabulary = {"labels": kept}
    (tmp_path / "less.yaml").write_text(yaml.safe_dump(vocabulary))
    with Archive(tagged["home"]) as archive:
        second = archive.tag(str(tmp_path / "less.yaml")).run_id
    result = _write(cli, tagged, folder, "--run", second)
    removed = {e["uri"] for e in result["images"] if dropped in e["removed"].get("dc:subject", [])}
    assert removed == {str(p) for p in images[1:]}
    for image in images[1:]:
        got = _exiftool(Path(str(image) + ".xmp"))
        assert dropped not in got["Subject"] and PATHS[dropped] not in got["HierarchicalSubject"]
    got = _exiftool(person.with_suffix(".xmp"))
    assert dropped in got["Subject"] and got["Rating"] == [4]


@needs_exiftool
def test_a_keyword_a_person_removed_is_not_written_again(cli, tagged):
    folder = tagged["images"] / "declined"
    expected = _expected(cli, tagged, tagged["run"])
    image = next(p for p in _images(folder) if expected[str(p)])
    sidecar = Path(str(image) + ".xmp")
    _write(cli, tagged, image, "--run", tagged["run"])
    label = expected[str(image)][0]
    edit = [EXIFTOOL, "-overwrite_original", f"-XMP-dc:Subject-={label}", str(sidecar)]
    assert subprocess.run(edit, capture_output=True, timeout=60).returncode == 0
    result = _write(cli, tagged, image, "--run", tagged["run"])
    assert result["images"][0]["status"] == "unchanged"
    assert label not in _exiftool(sidecar)["Subject"]
    sidecar.unlink()  # a sidecar deleted whole is written afresh


@needs_exiftool
def test_an_image_whose_name_is_not_utf8_gets_its_sidecar(cli, tagged):
    folder = tagged["images"] / "latin"
    result = _write(cli, tagged, folder, "--min-confidence", 0, "--run", tagged["run"])
    (entry,) = result["images"]
    assert entry["uri"].startswith("file://") and entry["uri"].endswith("/caf%E9.jpg")
    assert entry["status"] == "created" and entry["sidecar"] == entry["uri"] + ".xmp"
    sidecar = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.jpg.xmp")
    assert _exiftool(Path(sidecar))["Subject"] == entry["added"]["dc:subject"] != []


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` not writable, also for root (an immutable folder); skips where that cannot be made."""
    os.chmod(folder, 0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        probe = folder / ".probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a folder read-only here")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o755)


def test_a_read_only_folder_and_a_damaged_sidecar_fail_alone_with_reasons(cli, tagged):
    damaged, locked = tagged["images"] / "damaged", tagged["images"] / "readonly"
    expected = _expected(cli, tagged, tagged["run"])
    broken = next(p for p in _images(damaged) if expected[str(p)])
    Path(str(broken) + ".xmp").write_bytes(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF>oops</x:xmpmeta>")
    before = _hashes(damaged)
    with read_only(locked):
        result = _write(cli, tagged, damaged, locked, "--min-confidence", 0, "--run", tagged["run"])
        assert not [p for p in locked.iterdir() if p.suffix == ".xmp" or p.name.startswith(".")]
        text = cli(
            "write-xmp", "--home", tagged["home"], locked, "--min-confidence", 0, "--run", tagged["run"]
        )
    assert text.code == 0  # failures are listed, not an error (see the README)
    assert (
        text.err.count("failed   ") == len(_images(locked)) and f"{len(_images(locked))} failed" in text.err
    )
    by_uri = {e["uri"]: e for e in result["images"]}

    assert by_uri[str(broken)]["status"] == "failed" and "XMP" in by_uri[str(broken)]["reason"]
    for image in _images(locked):
        assert by_uri[str(image)]["status"] == "failed"
        reason = by_uri[str(image)]["reason"]
        assert ("ermission" in reason or "not permitted" in reason) and reason.endswith(f"({locked})")
    others = [p for p in _images(damaged) if p != broken]
    assert {by_uri[str(p)]["status"] for p in others} == {"created"}
    assert all(Path(str(p) + ".xmp").exists() for p in others)
    assert _hashes(damaged)[broken.name + ".xmp"] == before[broken.name + ".xmp"]
    assert result["totals"]["failed"] == len(_images(locked)) + 1


def test_dry_run_writes_nothing_and_stem_names_new_sidecars(cli, tagged):
    folder = tagged["images"] / "stem"
    before = _hashes(folder)
    dry = _write(cli, tagged, folder, "--dry-run", "--sidecar-name", "stem", "--run", tagged["run"])
    assert dry["dry_run"] and dry["totals"]["created"] > 0
    text = cli(
        "write-xmp",
        "--home",
        tagged["home"],
        folder,
        "--sidecar-name",
        "stem",
        "--dry-run",
        "--run",
        tagged["run"],
    )
    created = [e for e in dry["images"] if e["status"] == "created"]
    assert text.code == 0 and text.out.count("created ") == len(created) and "nothing written" in text.err
    assert _hashes(folder) == before
    real = _write(cli, tagged, folder, "--sidecar-name", "stem", "--run", tagged["run"])
    assert [(e["uri"], e["status"], e["added"]) for e in real["images"]] == [
        (e["uri"], e["status"], e["added"]) for e in dry["images"]
    ]
    for entry in real["images"]:
        image = Path(entry["uri"])
        assert entry["sidecar"] in (None, str(image.with_suffix(".xmp")))
        assert not Path(str(image) + ".xmp").exists()
        assert image.with_suffix(".xmp").exists() == (entry["status"] == "created")


def test_options_are_checked(cli, tagged):
    for args in (["--top", "0"], ["--min-confidence", "1.5"], ["--run", "999"]):
        out = cli("write-xmp", "--home", tagged["home"], *args)
        assert out.code in (2, 4) and out.err.startswith("vistag: error:"), args
    out = cli("write-xmp", "--home", tagged["home"], tagged["root"] / "nowhere")
    assert out.code == 4


def test_remote_images_are_skipped_and_a_shared_stem_sidecar_fails(tmp_path):
    from query.xmp import _targets

    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    rows = [
        {"id": 1, "uri": "gs://bucket/b.jpg"},
        {"id": 2, "uri": str(tmp_path / "a.jpg")},
        {"id": 3, "uri": str(tmp_path / "a.png")},
    ]
    remote, jpg, png = _targets(rows, "stem")
    assert remote["skip"] and remote["sidecar"] is None
    assert jpg["sidecar"] == png["sidecar"] == str(tmp_path / "a.xmp") and jpg["fail"] and png["fail"]
    assert not any(t["fail"] for t in _targets(rows, "full"))


def test_merge_keeps_the_persons_keywords_and_remembers_declined_ones():
    from query.xmp import merge

    change = merge(["holiday", "cat"], {}, ["cat", "dog"])  # "cat" was there before vistag: the person's
    assert (change.keywords, change.added, change.removed) == (["holiday", "cat", "dog"], ["dog"], [])
    assert change.records == {"dog": "written"}
    change = merge(["holiday", "cat", "dog"], change.records, ["cat"])
    assert (change.keywords, change.removed, change.records) == (["holiday", "cat"], ["dog"], {})
    change = merge(["holiday"], {"dog": "written"}, ["dog"])  # a person removed it
    assert (change.keywords, change.added, change.records) == (["holiday"], [], {"dog": "declined"})
    change = merge(["holiday", "dog"], {"dog": "declined"}, [])  # and added it back: theirs now
    assert (change.keywords, change.records) == (["holiday", "dog"], {})


def test_a_catalog_of_revision_0005_is_upgraded_with_the_xmp_record_table(tmp_path):
    from indexer.catalog import Catalog
    from tests.helpers import catalog_at_revision

    rows = ["INSERT INTO images (uri, status, updated) VALUES ('/a.jpg', 'indexed', 1)"]
    url = catalog_at_revision(tmp_path / "old.db", "0005", rows)
    catalog = Catalog(url)
    try:
        assert catalog.images()[0]["uri"] == "/a.jpg" and catalog.xmp_records(["/a.jpg.xmp"]) == {}
        catalog.set_xmp_records("/a.jpg.xmp", {"dc:subject": {"cat": "written", "dog": "declined"}}, None)
        assert catalog.xmp_records(["/a.jpg.xmp", "/b.xmp"]) == {
            "/a.jpg.xmp": {"dc:subject": {"cat": "written", "dog": "declined"}}
        }
        catalog.set_xmp_records("/a.jpg.xmp", {}, None)
        assert catalog.xmp_records(["/a.jpg.xmp"]) == {}
    finally:
        catalog.close()


@needs_exiftool
def test_many_and_odd_keywords_are_written_in_order(tmp_path):
    from core import sidecars

    keywords = [f"k{i}" for i in range(1, 13)] + ["type=Bag x", 'a "quoted" <odd> & one', "naïve café"]
    path = tmp_path / "photo.jpg.xmp"
    sidecars.replace_file(str(path), sidecars.with_keywords(sidecars.EMPTY_PACKET, {"dc:subject": keywords}))
    assert _exiftool(path)["Subject"] == keywords
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg.xmp"]  # no temporary file left


@needs_exiftool
def test_a_label_holding_a_hierarchy_separator_stays_out_of_that_field_with_a_warning(cli, tmp_path):
    """``b/w`` in digiKam:TagsList would be read as a tag ``b`` with a child ``w`` (digiKam, immich),
    ``a|b`` in lr:hierarchicalSubject likewise (Lightroom): each is left out of that field only."""
    from vistag import synth

    synth.make_corpus(tmp_path / "images", 3, seed=7, image_sizes=(48,))
    home = tmp_path / "home"
    labels = "red/orange circle,blue|green square"
    assert cli("index", tmp_path / "images", "--home", home, "--model", SHAPES_MODEL).code == 0
    assert cli("tag", "--home", home, "--labels", labels, "--min-confidence", "0").code == 0
    out = cli("write-xmp", "--home", home, "--json", "--top", "2", "--min-confidence", "0")
    assert out.code == 0, out.err
    warnings = out.json()["warnings"]
    assert len(warnings) == 2 and "not written to digiKam:TagsList" in warnings[0], warnings
    assert "'blue|green square'" in warnings[1] and "lr:hierarchicalSubject" in warnings[1]
    assert out.err.count("warning: label") == 2
    for image in _images(tmp_path / "images"):
        got = _exiftool(Path(str(image) + ".xmp"))
        assert sorted(got["Subject"]) == ["blue|green square", "red/orange circle"]
        assert got["HierarchicalSubject"] == ["red/orange circle"]
        assert got["TagsList"] == ["blue|green square"]
