"""Tagging in the product: zero-shot and ZLaP runs, stored scores, calibration, new images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.errors import InputError
from query.calibration import fit_calibration
from query.scoring import run_dir
from query.vocab import parse_vocabulary
from query.zlap import zlap_transductive
from vistag import Archive

LABELS = ["red circle", "blue square", "green star", "yellow triangle"]


def _corpus_matrix(archive):
    from query.tagging import corpus_matrix

    return corpus_matrix(archive.home, archive.catalog, archive.searcher.version())


def test_zlap_run_matches_the_reference_solver_and_tags_new_images(corpus, tiny_model, tmp_path, cli):
    home = tmp_path / "home"
    with Archive(home) as archive:
        archive.index([corpus.root], model=tiny_model)
        result = archive.tag(LABELS, top=2, method="zlap")
        ids, xb = _corpus_matrix(archive)
        text = np.load(run_dir(archive.home, result.run_id) / "text.npz")["labels"]
        expected = zlap_transductive(xb, text)  # exact kNN, reference defaults, its own graph
        stored = archive.catalog.tags(result.run_id)
        assert len(stored) == len(ids) * len(LABELS) and {t["method"] for t in stored} == {"zlap"}
        got = np.zeros_like(expected)
        col = {label: c for c, label in enumerate(LABELS)}
        pos = {int(i): p for p, i in enumerate(ids)}
        for t in stored:
            got[pos[t["image_id"]], col[t["label"]]] = t["score"]
            assert 0.0 <= t["confidence"] <= 1.0
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert list(archive.searcher.version().path.glob("knn-*.npz"))  # graph stored with the version
        assert {r["label"] for r in result.top} <= set(LABELS) and len(result.top) == 2 * len(ids)

        zero = archive.tag(LABELS[:2], top=1)
        for path in corpus.good[:2]:
            shutil.copy(path, corpus.root / f"new-{path.name}")
        new = tmp_path / "fresh.png"
        from PIL import Image

        Image.effect_noise((50, 40), 80).convert("RGB").save(new)
        shutil.copy(new, corpus.root / "fresh.png")
        indexed = archive.index([corpus.root], model=tiny_model)
        assert set(indexed.tag_runs) == {result.run_id, zero.run_id}
        added = archive.catalog.images_touched(indexed.run_id)
        assert len(added) == 3
        inductive = archive.catalog.tags(result.run_id, image_ids=added)
        assert len(inductive) == 3 * len(LABELS) and {t["method"] for t in inductive} == {"zlap-inductive"}
        assert all(t["score"] >= 0 and 0 <= t["confidence"] <= 1 for t in inductive)
        zs = archive.catalog.tags(zero.run_id, image_ids=added)
        assert len(zs) == 3 * 2 and {t["method"] for t in zs} == {"zeroshot"}
        # a copy of an indexed image gets exactly its twin's zero-shot scores
        twin = archive.catalog.image(str(corpus.good[0]))["id"]
        copy = archive.catalog.image(str(corpus.root / f"new-{corpus.good[0].name}"))["id"]
        by = {(t["image_id"], t["label"]): t["score"] for t in archive.catalog.tags(zero.run_id)}
        assert by[(twin, LABELS[0])] == pytest.approx(by[(copy, LABELS[0])], abs=1e-6)

    res = cli(
        "tag",
        "--labels",
        ",".join(LABELS),
        "--method",
        "zlap",
        "--min-confidence",
        0.99,
        "--home",
        home,
        "--json",
    )
    assert res.code == 0, res.err
    assert all(row["confidence"] >= 0.99 for row in res.json())


def test_calibration_is_per_label_and_monotone():
    rng = np.random.default_rng(0)
    n, c = 3000, 4
    truth = rng.integers(0, c, n)
    scores = rng.normal(0.2, 0.02, (n, c)) + np.eye(c)[truth] * 0.06 + np.array([0.0, 0.01, -0.01, 0.02])
    scores[:, 3] -= 0.3  # a label nobody prefers
    cal = fit_calibration(scores)
    conf = cal.apply(scores)
    assert conf[:, 3].max() < 0.05
    for j in range(3):  # a label's confidence rises with its score, and 0.5 splits winners from the rest
        order = np.argsort(scores[:, j])
        assert np.all(np.diff(conf[order, j]) >= -1e-12)
        wins = scores.argmax(1) == j
        assert ((conf[:, j] > 0.5) == wins).mean() > 0.75  # one score alone cannot know the others
    # labels with different score levels get one meaning of 0.5: about their share of winners
    for j in range(3):
        assert abs((conf[:, j] > 0.5).mean() - (scores.argmax(1) == j).mean()) < 0.1


def test_label_parsing(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# animals\ncat\n\ndog\ncat\n  bird  \n")
    assert [x.name for x in parse_vocabulary(str(f))] == ["cat", "dog", "bird"]
    assert [x.name for x in parse_vocabulary("a, b ,a")] == ["a", "b"]
    with pytest.raises(InputError, match="no labels"):
        parse_vocabulary(" , ")
    with pytest.raises(InputError, match="longer than"):
        parse_vocabulary(["x" * 300])


def test_bad_tag_options(indexed_home):
    home, _ = indexed_home
    with Archive(home) as archive:
        with pytest.raises(InputError, match="unknown tagging method"):
            archive.tag(["a"], method="magic")
        with pytest.raises(InputError, match="min-confidence"):
            archive.tag(["a"], min_confidence=2)


def test_vocabulary_with_negatives_and_parents_through_both_methods(corpus, tiny_model, tmp_path):
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text(
        "labels:\n  - name: circle\n    parent: shape\n    negatives: [a drawing of a square]\n"
        "  - name: square\n    parent: shape\n    synonyms: [box]\n  - shape\n"
    )
    with Archive(tmp_path / "home") as archive:
        archive.index([corpus.root], model=tiny_model)
        for method in ("zeroshot", "zlap"):
            result = archive.tag(str(vocab), method=method, top=3, templates="imagenet")
            rows = archive.catalog.tags(result.run_id)
            by = {}
            for t in rows:
                by.setdefault(t["image_id"], {})[t["label"]] = t["score"]
            assert len(by) == len(corpus.good)
            assert all(s["shape"] >= max(s["circle"], s["square"]) - 1e-12 for s in by.values())
        shutil.copy(corpus.good[0], corpus.root / "again.png")
        from PIL import Image

        Image.effect_noise((40, 40), 60).convert("RGB").save(corpus.root / "noise-new.png")
        indexed = archive.index([corpus.root], model=tiny_model)
        assert len(indexed.tag_runs) == 2
        new_ids = archive.catalog.images_touched(indexed.run_id)
        for run_id in indexed.tag_runs:
            rows = archive.catalog.tags(run_id, image_ids=new_ids)
            assert len(rows) == 2 * 3
            scores = {(t["image_id"], t["label"]): t["score"] for t in rows}
            for i in new_ids:
                assert scores[(i, "shape")] >= max(scores[(i, "circle")], scores[(i, "square")]) - 1e-12


def test_eval_explain_and_thresholds_through_the_cli(corpus, tiny_model, tmp_path, cli):
    home = tmp_path / "home"
    assert cli("index", corpus.root, "--home", home, "--model", tiny_model).code == 0
    truth = tmp_path / "truth.csv"
    shapes = sorted(corpus.root.glob("shapes/*"))
    names = ["circle", "square", "star"]
    truth.write_text("uri,label\n" + "".join(f"{p},{names[i % 3]}\n" for i, p in enumerate(shapes)))
    res = cli("eval", "--truth", truth, "--home", home, "--json", "--save-thresholds", tmp_path / "th.json")
    assert res.code == 0, res.err
    report = res.json()
    assert report["labels"] == sorted(names) and set(report["methods"]) == {"zeroshot", "zlap"}
    for result in report["methods"].values():
        assert 0 <= result["top1"] <= 1 and 0 <= result["map"] <= 1 and result["images"] == len(shapes)
        assert all(v["support"] > 0 for v in result["labels"].values())
        fitted = result["fitted"]["labels"]
        assert all(fitted[n]["recall"] > 0 for n in names)  # an F1-best cut keeps some positives
    thresholds = json.loads((tmp_path / "th.json").read_text())
    assert set(thresholds) == set(names)
    table = cli("eval", "--truth", truth, "--home", home, "--methods", "zeroshot")
    assert "top-1 accuracy" in table.out and "mAP" in table.out

    res = cli(
        "tag", "--labels", ",".join(names), "--home", home, "--thresholds", tmp_path / "th.json", "--json"
    )
    cut = {n: max(0.0, thresholds[n]) for n in names}
    assert all(r["confidence"] >= cut[r["label"]] - 1e-6 for r in res.json())
    rows = cli("explain", shapes[0], "--home", home, "--json").json()
    assert {r["label"] for r in rows} <= set(names) and rows[0]["rank"] == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("uri,label\n/nowhere.jpg,circle\n")
    res = cli("eval", "--truth", bad, "--home", home)
    assert res.code == 2 and "line 2" in res.err
