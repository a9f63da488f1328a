"""`vistag eval --truth keywords`: the keywords the images carry (written with exiftool before
indexing) are the ground truth, the same truth as a CSV of them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vistag.synth import label, make_corpus

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed")
UNLABELLED = 3  # the last images carry no keyword that is a label


def write_tagged_corpus(root: Path) -> dict[Path, str]:
    """16 shape JPEGs; all but the last ``UNLABELLED`` carry their true label as a keyword (in
    title case: keywords compare case-insensitively), one of those an unrelated keyword."""
    made = make_corpus(root, 16, seed=3, formats=("jpg",))
    truth = {}
    for n, (path, spec) in enumerate(made):
        words = ["holiday"] if n == len(made) - 1 else []
        if n < len(made) - UNLABELLED:
            truth[Path(path)] = label(spec)
            words.append(label(spec).title())
        if words:
            assignments = [f"-XMP-dc:Subject={w}" for w in words]
            subprocess.run([EXIFTOOL, "-q", "-overwrite_original", *assignments, str(path)], check=True)
    return truth


@needs_exiftool
def test_keyword_truth_is_the_csv_truth_of_the_same_keywords(tmp_path, tiny_model, cli):
    truth = write_tagged_corpus(tmp_path / "photos")
    home = tmp_path / "home"
    assert cli("index", tmp_path / "photos", "--home", home, "--model", tiny_model).code == 0
    labels = ",".join(sorted(set(truth.values())))
    by_keywords = cli("eval", "--truth", "keywords", "--labels", labels, "--home", home, "--json")
    assert by_keywords.code == 0, by_keywords.err
    csv = tmp_path / "truth.csv"
    csv.write_text("uri,label\n" + "".join(f"{p},{name}\n" for p, name in truth.items()))
    by_csv = cli("eval", "--truth", csv, "--labels", labels, "--home", home, "--json")
    assert by_csv.code == 0, by_csv.err
    keywords_report, csv_report = by_keywords.json(), by_csv.json()
    assert keywords_report["truth"] == {"source": "keywords", "images": 13, "left_out": UNLABELLED}
    assert csv_report["truth"]["images"] == 13 and csv_report["truth"]["left_out"] == 0
    assert keywords_report["labels"] == csv_report["labels"]
    for method in ("zeroshot", "zlap"):
        assert keywords_report["methods"][method]["images"] == len(truth)
        assert keywords_report["methods"][method] == csv_report["methods"][method]

    table = cli("eval", "--truth", "keywords", "--labels", labels, "--home", home, "--methods", "zeroshot")
    assert f"keywords of 13 images ({UNLABELLED} indexed images with none of the labels" in table.out
    res = cli("eval", "--truth", "keywords", "--home", home)
    assert res.code == 2 and "needs --labels" in res.err and len(res.err.strip().splitlines()) == 1
    res = cli("eval", "--truth", "keywords", "--labels", "purple hexagon", "--home", home)
    assert res.code == 2 and "no indexed image has one of the labels" in res.err
