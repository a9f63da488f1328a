"""Search filters on `vistag export` (every format) and `vistag tag`: exactly the images that pass;
a filtered tag run is recorded with its filter and never applied to images indexed later."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
from PIL import Image

from vistag import Archive

LABELS = "circle,square,star"


def _uris(cli, home, *options: object) -> dict[str, set[str]]:
    """The uris each text format exports with ``options``."""
    out = {}
    for fmt in ("json", "csv"):
        res = cli("export", "--home", home, "--format", fmt, *options)
        assert res.code == 0, res.err
        rows = json.loads(res.out) if fmt == "json" else list(csv.DictReader(io.StringIO(res.out)))
        out[fmt] = {r["uri"] for r in rows}
    return out


def test_export_filters_keep_exactly_the_images_that_pass(indexed_home, cli, tmp_path):
    home, corpus = indexed_home
    textures = {str(p) for p in corpus.good if p.parent.name == "textures"}
    shapes = {str(p) for p in corpus.good if p.parent.name == "shapes"}
    assert _uris(cli, home, "--path", corpus.root / "textures") == {"json": textures, "csv": textures}
    assert _uris(cli, home, "--path", corpus.root / "shapes", "--since", "1971-01-01")["json"] == shapes
    assert _uris(cli, home, "--until", "1971-01-01") == {"json": set(), "csv": set()}
    everything = _uris(cli, home)["json"]
    assert textures | shapes <= everything and len(everything) > len(textures | shapes)  # failed too

    target = tmp_path / "v.npz"
    res = cli("export", "--home", home, "--format", "npz", "-o", target, "--path", corpus.root / "textures")
    assert res.code == 0, res.err
    with np.load(target) as npz:
        assert set(npz["uris"].tolist()) == textures and npz["vectors"].shape[0] == len(textures)
        ids = npz["ids"].tolist()
    with np.load(_npz(cli, home, tmp_path)) as full:
        rows = {i: r for i, r in zip(full["ids"].tolist(), full["vectors"], strict=True)}
    with np.load(target) as npz:
        assert all(np.array_equal(rows[i], v) for i, v in zip(ids, npz["vectors"], strict=True))
    res = cli("export", "--home", home, "--near", "91,0,5")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1


def _npz(cli, home, tmp_path):
    target = tmp_path / "all.npz"
    assert cli("export", "--home", home, "--format", "npz", "-o", target).code == 0
    return target


def _tagged(home, run_id: int) -> set[str]:
    with Archive(home) as archive:
        ids = {t["image_id"] for t in archive.catalog.tags(run_id)}
        return {r["uri"] for r in archive.catalog.images(sorted(ids), status=None)}


def test_a_filtered_tag_run_tags_only_the_images_that_pass_and_never_new_ones(home_copy, cli):
    home, corpus = home_copy
    textures = {str(p) for p in corpus.good if p.parent.name == "textures"}
    full = cli("tag", "--labels", LABELS, "--home", home, "--json")
    assert full.code == 0, full.err
    res = cli("tag", "--labels", LABELS, "--home", home, "--json", "--path", corpus.root / "textures")
    assert res.code == 0, res.err
    assert {r["uri"] for r in res.json()} == textures
    with Archive(home) as archive:
        runs = [r for r in archive.runs(10) if r["kind"] == "tag"]
        filtered, unfiltered = runs[0]["id"], runs[1]["id"]
        params = json.loads(runs[0]["params"]) if isinstance(runs[0]["params"], str) else runs[0]["params"]
    assert params["filter"]["prefix"] == str(corpus.root / "textures") + "/"
    assert _tagged(home, filtered) == textures and len(_tagged(home, unfiltered)) > len(textures)
    # the filtered run is the latest: --tag sees its tags only; label-studio tasks follow --path
    assert _uris(cli, home, "--tag", "circle")["json"] == textures
    tasks = cli("export", "--home", home, "--format", "label-studio", "--path", corpus.root / "textures")
    assert {t["data"]["uri"] for t in json.loads(tasks.out)} == textures

    new = corpus.root / "textures" / "new.png"  # in the shared corpus (the filter's folder): removed after
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(new)
    try:
        res = cli("index", corpus.root, "--home", home, "--json")
    finally:
        new.unlink()
    assert res.code == 0, res.err
    assert res.json()["tag_runs"] == [unfiltered]
    assert str(new) in _tagged(home, unfiltered) and _tagged(home, filtered) == textures
