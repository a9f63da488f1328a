"""Duplicate groups on real pixels: planted families of photo-like pictures and their variants
among distinct pictures, found by perceptual hash with a model that knows nothing (and with the
shapes model); decisions remembered by content; the keeper's rule; moves only when asked."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from query.dedupe import _near, _similar
from query.duplicates import Contents, DuplicateConfig, Edges, Thresholds, measure, thresholds, unique_pairs
from vistag import Archive
from vistag.synth.families import VARIANTS, make_families

SHAPES_MODEL = "local-dir:" + str(Path(__file__).resolve().parent / "fixtures" / "shapes-clip")


def _families(root: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    folder = root / "photos"
    return folder, list(make_families(folder, distinct=70, families=12, seed=7))


@pytest.fixture(scope="module")
def families_home(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("families")
    folder, planted = _families(root)
    with Archive(root / "home") as archive:
        archive.index([folder], model=tiny_model)
    return root / "home", folder, planted


def _family(uri: str) -> str:
    return Path(uri).name.split("-")[1].split(".")[0]  # photo-00003-q35.jpg -> 00003


def score(groups: list[dict], planted: list[tuple[str, str, str]]) -> tuple[float, float, dict[str, float]]:
    """Pair precision (found pairs within one family), recall of the planted (original, variant)
    pairs, and recall per kind of variant."""
    found = {
        frozenset((a["uri"], b["uri"]))
        for g in groups
        if g["kind"] in ("near", "exact")
        for a, b in itertools.combinations(g["members"], 2)
    }
    right = sum(1 for pair in found if len({_family(u) for u in pair}) == 1)
    hit = Counter(kind for a, b, kind in planted if frozenset((a, b)) in found)
    total = Counter(kind for _, _, kind in planted)
    by_kind = {kind: hit[kind] / total[kind] for kind in total}
    return right / max(len(found), 1), sum(hit.values()) / len(planted), by_kind


def test_families_are_found_by_hash_with_a_model_that_knows_nothing(families_home):
    home, _, planted = families_home
    with Archive(home) as archive:
        found = archive.duplicates()
    precision, recall, by_kind = score(found["groups"], planted)
    print("random model: precision", precision, "recall", recall, by_kind)
    assert precision >= 0.95 and recall >= 0.9, (precision, recall, by_kind)
    exact = [g for g in found["groups"] if g["kind"] == "exact"]
    copies = [(a, b) for a, b, kind in planted if kind == "copy"]  # identical bytes
    assert len(exact) == len(copies)
    assert {frozenset(m["uri"] for m in g["members"]) for g in exact} == {frozenset(p) for p in copies}
    assert found["unhashed"] == 0


def test_families_with_the_shapes_model(tmp_path):
    folder, planted = _families(tmp_path)
    with Archive(tmp_path / "home") as archive:
        archive.index([folder], model=SHAPES_MODEL)
        found = archive.duplicates(kind="all")
    precision, recall, by_kind = score(found["groups"], planted)
    print("shapes model: precision", precision, "recall", recall, by_kind)
    assert precision >= 0.95 and recall >= 0.9, (precision, recall, by_kind)


def test_the_keeper_and_its_rule(families_home):
    home, _, _ = families_home
    with Archive(home) as archive:
        group = next(g for g in archive.duplicates(kind="near")["groups"])
        keep = next(m for m in group["members"] if m["id"] == group["keep"])
        assert Path(keep["uri"]).name.count("-") == 1  # the original: most pixels, JPEG, oldest file
        assert group["why"].startswith("kept by most pixels")
        first_png = archive.duplicates(kind="near", keep_rule="format,pixels,oldest")["groups"][0]
        names = {m["id"]: Path(m["uri"]).name for m in first_png["members"]}
        assert not names[first_png["keep"]].endswith(".png")  # PNG re-saves are never preferred
    with pytest.raises(Exception, match="keep rule"):
        Archive(home).duplicates(keep_rule="pixels,pixels,format")


def test_decisions_survive_reindexing_moves_and_new_copies(tmp_path, tiny_model, cli):
    folder, _ = _families(tmp_path)
    home = tmp_path / "home"
    assert cli("index", folder, "--home", home, "--model", tiny_model).code == 0
    groups = cli("duplicates", "--kind", "near", "--json", "--home", home).json()
    kept, refused = groups[0], groups[1]
    out = cli("duplicates", "resolve", kept["id"], "--keep", kept["keep"], "--home", home)
    assert out.code == 0, out.err
    out = cli("duplicates", "resolve", str(refused["members"][0]["id"]), "--not-duplicates", "--home", home)
    assert out.code == 0, out.err
    listed = {g["id"] for g in cli("duplicates", "--json", "--home", home).json()}
    assert kept["id"] not in listed and refused["id"] not in listed
    moved = Path(kept["members"][-1]["uri"])  # a member moves, another content of the group gets a copy
    (folder / "moved").mkdir()
    shutil.move(moved, folder / "moved" / moved.name)
    shutil.copy(kept["members"][0]["uri"], folder / "moved" / "another-copy.jpg")
    assert cli("index", folder, "--home", home).code == 0
    after = cli("duplicates", "--json", "--home", home).json()
    kept_contents = {m["sha256"] for m in kept["members"]}
    assert not [g for g in after if {m["sha256"] for m in g["members"]} <= kept_contents]  # nor its copies
    refused_contents = {m["sha256"] for m in refused["members"]}
    assert (
        not [  # the "not duplicates" contents are never paired again (identical files still are)
            g
            for g in after
            if g["kind"] != "exact" and len({m["sha256"] for m in g["members"]} & refused_contents) > 1
        ]
    )


def test_move_to_moves_the_others_keeping_their_paths_and_deletes_nothing(tmp_path, tiny_model, cli):
    folder, _ = _families(tmp_path)
    home, aside = tmp_path / "home", tmp_path / "aside"
    assert cli("index", folder, "--home", home, "--model", tiny_model).code == 0
    group = cli("duplicates", "--kind", "near", "--json", "--home", home).json()[0]
    files_before = sorted(p.name for p in folder.rglob("*") if p.is_file())
    out = cli(
        "duplicates",
        "resolve",
        group["id"],
        "--keep",
        group["keep"],
        "--move-to",
        aside,
        "--json",
        "--home",
        home,
    )
    assert out.code == 0, out.err
    moved = out.json()["moved"]
    assert len(moved) == len(group["members"]) - 1
    kept = next(m["uri"] for m in group["members"] if m["id"] == group["keep"])
    assert Path(kept).exists() and all(Path(dst).exists() and not Path(src).exists() for src, dst in moved)
    assert all(Path(dst).relative_to(aside) == Path(src).relative_to(folder) for src, dst in moved)
    files_after = sorted(p.name for p in [*folder.rglob("*"), *aside.rglob("*")] if p.is_file())
    assert files_after == files_before  # moved, never deleted


def test_duplicates_options_are_checked(cli, families_home):
    home, _, _ = families_home
    for args, message in (
        (["resolve"], "say which group"),
        (["--keep", "3"], "go with `vistag duplicates resolve`"),
        (["resolve", "near-0000000000", "--keep", "1"], "no duplicate group"),
        (["resolve", "1", "--keep", "1", "--not-duplicates"], "--keep ID or --not-duplicates"),
        (["--threshold", "70"], "bits"),
        (["--keep-rule", "size"], "keep rule"),
    ):
        out = cli("duplicates", *args, "--home", home)
        assert out.code in (2, 4) and message in out.err, (args, out.err)


def test_older_archives_get_hashes_with_refresh_metadata(tmp_path, tiny_model, cli):
    import sqlalchemy as sa

    folder, planted = _families(tmp_path)
    home = tmp_path / "home"
    assert cli("index", folder, "--home", home, "--model", tiny_model).code == 0
    with Archive(home) as archive:  # as an older vistag left it: no perceptual hashes
        with archive.catalog.engine.begin() as conn:
            conn.execute(sa.text("UPDATE images SET phash = NULL"))
        assert archive.duplicates()["unhashed"] > 0
    out = cli("index", folder, "--home", home, "--refresh-metadata", "--json")
    assert out.code == 0 and out.json()["embedded"] == 0 and out.json()["plan"]["refresh"] > 0
    with Archive(home) as archive:
        found = archive.duplicates()
    assert found["unhashed"] == 0 and score(found["groups"], planted)[1] >= 0.9


def test_similar_shots_are_grouped_apart_from_near_copies():
    """Shots of one moment: close in embedding and time, hashes apart; near copies are their own group."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 16))
    xb = np.stack(
        [base[0], base[0] + 0.3 * base[1], base[0] + 0.3 * base[2], base[3], base[3] + 0.01, base[4]]
    )
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    hashes = rng.integers(0, 2**63, 6, dtype=np.uint64)
    hashes[4] = hashes[3] ^ np.uint64(0b1011)  # 4 and 3: a near copy
    when = np.array([0.0, 30.0, 60.0, 0.0, 0.0, 0.0])
    found = Contents([f"{i:064x}" for i in range(6)], hashes, np.ones(6, bool), xb.astype(np.float32), when)
    i, j = np.triu_indices(6, 1)
    cosine = np.einsum("nd,nd->n", found.xb[i], found.xb[j])
    bits = np.array([bin(int(hashes[a] ^ hashes[b])).count("1") for a, b in zip(i, j, strict=True)])
    config = DuplicateConfig()
    limits = Thresholds(near=0.99, similar=0.9, agree=-1.0)
    groups = _similar(found, Edges(i, j, bits, cosine), config, limits, {3: 0, 4: 0})
    assert groups == [[0, 1, 2]]
    late = Contents(found.shas, hashes, found.hashed, found.xb, np.array([0.0, 3000.0, 6000.0, 0, 0, 0]))
    assert _similar(late, Edges(i, j, bits, cosine), config, limits, {}) == []  # too far apart in time


def test_close_hashes_of_unrelated_pictures_need_the_models_agreement():
    """At a million images some unrelated hashes fall within ``near_bits`` by chance; where the
    model tells pictures apart, such a pair must also reach the archive's background cosine."""
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((400, 32)).astype(np.float32)
    xb[1] = xb[0] + 0.05 * xb[1]  # 0 and 1: a real near copy
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    hashes = rng.integers(0, 2**63, 400, dtype=np.uint64)
    hashes[1] = hashes[0] ^ np.uint64(0b111)  # 3 bits apart
    hashes[3] = hashes[2] ^ np.uint64(0b11)  # 2 and 3: unrelated pictures, hashes 2 bits apart
    found = Contents([f"{i:064x}" for i in range(400)], hashes, np.ones(400, bool), xb, np.zeros(400))
    config = DuplicateConfig()
    limits = thresholds(found, config)
    assert -1.0 < limits.agree < 0.9 and limits.near >= 0.97
    edges = measure(found, unique_pairs(np.array([[0, 1], [3, 2], [2, 3], [5, 5], [-1, 4]]), 400), config)
    assert sorted(zip(edges.i.tolist(), edges.j.tolist(), strict=True)) == [(0, 1), (2, 3)]
    assert _near(found, edges, config, limits) == [[0, 1]]
    blind = Thresholds(near=limits.near, similar=limits.similar, agree=-1.0)  # a model that knows nothing
    assert sorted(_near(found, edges, config, blind)) == [[0, 1], [2, 3]]


def test_pairs_no_test_could_pick_are_not_measured():
    """Hashes farther apart than ``crop_bits`` and taken hours apart: neither near nor similar."""
    xb = np.eye(4, dtype=np.float32)
    hashes = np.array([0, 2**40 - 1, 0, 1], dtype=np.uint64)  # 0-1: 40 bits apart
    when = np.array([0.0, 86_400.0, 86_400.0, 0.0])
    found = Contents([f"{i:064x}" for i in range(4)], hashes, np.array([True, True, False, True]), xb, when)
    edges = measure(found, np.array([[0, 1], [0, 2], [1, 3], [0, 3]]), DuplicateConfig(), block=1)
    assert list(zip(edges.i.tolist(), edges.j.tolist(), edges.bits.tolist(), strict=True)) == [
        (0, 2, 64),  # 2 has no hash: its cosine decides
        (0, 3, 1),
    ]
    assert edges.cosine.tolist() == [0.0, 0.0]


def test_json_members_carry_what_a_reviewer_needs(families_home, cli):
    home, _, _ = families_home
    groups = cli("duplicates", "--json", "--home", home).json()
    member = groups[0]["members"][0]
    assert {"id", "uri", "width", "height", "size", "taken"} <= set(member)
    assert {"kind", "members", "keep", "why"} <= set(groups[0]) and groups[0]["kind"] in (
        "exact",
        "near",
        "similar",
    )
    assert member["taken"] and json.dumps(groups)
    assert os.path.isabs(member["uri"])
    assert VARIANTS
