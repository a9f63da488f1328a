"""Inference engines: OpenVINO on the CPU by default, validated against torch, recorded with the
vectors, and torch after one warning line whenever it cannot be used (see core.engines)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core import engines, ov_engine
from core.models import load_model, parse_model_spec
from vistag import synth

pytestmark = pytest.mark.skipif(not engines.openvino_installed(), reason="openvino is not installed")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    synth.make_corpus(folder, 24, seed=5, image_sizes=(40, 56))
    return folder


@pytest.fixture
def fresh_towers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A process with no tower built yet and an empty export cache of its own."""
    monkeypatch.setattr(engines, "_TOWERS", {})
    cache = tmp_path / "engine-cache"
    monkeypatch.setenv(engines.ENV_CACHE, str(cache))
    return cache


def _index(cli, images: Path, home: Path, model: str, *extra: object) -> None:
    out = cli("index", images, "--home", home, "--model", model, *extra)
    assert out.code == 0, out.err


def _vectors(home: Path) -> tuple[dict[str, np.ndarray], list[dict], dict]:
    """Stored vectors by file name, the shard manifests and the published version's manifest."""
    from indexer.home import Home
    from pipeline import shards

    manifests, by_name = [], {}
    for folder in sorted((home / "shards").glob("*/run-*")):
        for name in shards.list_shards(str(folder)):
            shard = shards.read_shard(str(folder), name)
            manifests.append(shard.manifest)
            for row in shard.meta:
                by_name[Path(row["uri"]).name] = shard.embeddings[row["row"]]
    version = next((home / "index").glob("*/v*/manifest.json"))
    assert Home.resolve(home).root == home.resolve()
    return by_name, manifests, json.loads(version.read_text())


def test_auto_embeds_with_openvino_on_a_cpu_matching_torch_and_says_so(
    cli, images, tmp_path, tiny_model, fresh_towers
):
    """The default engine on this CPU is OpenVINO; its vectors match torch fp32's to 0.999 and the
    figure is in every shard's and the version's manifest."""
    _index(cli, images, tmp_path / "auto", tiny_model)
    _index(cli, images, tmp_path / "torch", tiny_model, "--engine", "torch")
    auto, auto_shards, auto_version = _vectors(tmp_path / "auto")
    ref, ref_shards, ref_version = _vectors(tmp_path / "torch")
    assert set(auto) == set(ref) and len(auto) == 24
    cosines = [float(auto[name] @ ref[name]) for name in ref]
    assert min(cosines) >= engines.MIN_COSINE
    engine = auto_shards[0]["engine"]
    assert engine["engine"] == "openvino" and engine["min_cosine"] >= engines.MIN_COSINE
    assert engine["precision"] == ov_engine.cpu_precision()
    assert auto_version["engines"] == [engine | {"vectors": 24}]
    assert ref_shards[0]["engine"]["engine"] == "torch" and ref_shards[0]["engine"]["min_cosine"] == 1.0
    assert ref_version["engines"][0]["engine"] == "torch"
    assert (fresh_towers / f"openvino-{ov_engine.version()}").is_dir()
    status = cli("status", "--home", tmp_path / "auto", "--json").json()
    assert status["index"]["engines"] == auto_version["engines"]
    text = cli("status", "--home", tmp_path / "auto").out
    assert f"engine:   openvino {engine['precision']}: 24 vectors, min cosine to torch fp32" in text


def test_an_export_is_made_once_and_reused(cli, images, tmp_path, tiny_model, fresh_towers, monkeypatch):
    _index(cli, images, tmp_path / "first", tiny_model)
    xml = next(fresh_towers.glob("openvino-*/*/image/model.xml"))
    before = xml.stat().st_mtime_ns
    monkeypatch.setattr(engines, "_TOWERS", {})  # as a new process would

    def no_trace(*args, **kwargs):
        raise AssertionError("the model was traced again")

    monkeypatch.setattr("torch.jit.trace", no_trace)
    _index(cli, images, tmp_path / "second", tiny_model)
    assert xml.stat().st_mtime_ns == before
    _, manifests, _ = _vectors(tmp_path / "second")
    assert manifests[0]["engine"]["engine"] == "openvino"


def test_a_damaged_export_is_made_again(cli, images, tmp_path, tiny_model, fresh_towers, monkeypatch):
    _index(cli, images, tmp_path / "first", tiny_model)
    weights = next(fresh_towers.glob("openvino-*/*/image/model.bin"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: OpenVINO cannot compile it
    monkeypatch.setattr(engines, "_TOWERS", {})
    _index(cli, images, tmp_path / "second", tiny_model)
    _, manifests, _ = _vectors(tmp_path / "second")
    assert manifests[0]["engine"]["engine"] == "openvino"
    assert weights.stat().st_size > 100


@pytest.mark.parametrize("failure", ["export", "validation"])
def test_an_engine_that_fails_falls_back_to_torch_with_one_warning(
    cli, images, tmp_path, tiny_model, fresh_towers, monkeypatch, caplog, failure
):
    if failure == "export":

        def broken(*args, **kwargs):
            raise RuntimeError("conversion failed\nwith a second line")

        monkeypatch.setattr(ov_engine, "export", broken)
    else:
        monkeypatch.setattr(engines, "MIN_COSINE", 1.5)  # no engine can match this
    with caplog.at_level(logging.WARNING, logger="core.engines"):
        _index(cli, images, tmp_path / "home", tiny_model)
    warnings = [r.getMessage() for r in caplog.records if r.name == "core.engines"]
    assert len(warnings) == 1 and "using torch" in warnings[0] and "\n" not in warnings[0]
    assert ("conversion failed" if failure == "export" else "matches torch fp32 only") in warnings[0]
    _, manifests, version = _vectors(tmp_path / "home")
    assert {m["engine"]["engine"] for m in manifests} == {"torch"}
    assert [e["engine"] for e in version["engines"]] == ["torch"]


def test_engine_choices_are_checked_before_any_work(cli, images, tmp_path, tiny_model, monkeypatch):
    home = tmp_path / "home"
    cases = [
        (
            ("--engine", "opnvino"),
            "unknown engine 'opnvino' (choose auto, torch, openvino); did you mean openvino?",
        ),
        (("--engine", "openvino", "--device", "cuda"), "engine openvino runs on the CPU, not cuda"),
    ]
    for extra, message in cases:
        out = cli("index", images, "--home", home, "--model", tiny_model, *extra)
        assert out.code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1
    monkeypatch.setenv(engines.ENV_ENGINE, "fast")
    out = cli("search", "a dog", "--home", home)
    assert out.code == 2 and "unknown engine 'fast'" in out.err
    assert not home.exists()
    monkeypatch.setattr(engines, "openvino_installed", lambda: False)
    with pytest.raises(Exception, match="pip install openvino"):
        engines.check("openvino", None)
    assert engines.check("auto", None) == ("auto", None) and engines.resolve("auto", "cpu") == "torch"


def test_openvino_implies_the_cpu_and_auto_keeps_torch_on_a_gpu():
    assert engines.check("openvino", None) == ("openvino", "cpu")
    assert engines.check("torch", "cuda") == ("torch", "cuda")
    assert engines.resolve("auto", "cuda") == "torch" and engines.resolve("auto", "cuda:1") == "torch"
    assert engines.resolve("auto", "cpu") == "openvino"


def test_text_uses_openvino_for_many_texts_and_torch_for_a_query(tiny_model, fresh_towers):
    from core.encode import encode_texts
    from query.text import TextEncoder

    loaded = load_model(parse_model_spec(tiny_model), "cpu")
    texts = [f"a photo of thing number {i}" for i in range(engines.AUTO_TEXT_MIN)]
    reference = encode_texts(loaded, texts)
    many = TextEncoder(loaded, engine="auto", engine_cache=fresh_towers).encode(texts)
    assert np.min(np.sum(many * reference, axis=1)) >= engines.MIN_COSINE
    assert not np.array_equal(many, reference)  # bf16 or not, OpenVINO's arithmetic differs from torch's
    one = TextEncoder(loaded, engine="auto", engine_cache=fresh_towers).encode(texts[:1])
    np.testing.assert_array_equal(one, encode_texts(loaded, texts[:1]))  # torch, bit for bit
    forced = TextEncoder(loaded, engine="openvino", engine_cache=fresh_towers).encode(texts[:1])
    np.testing.assert_allclose(forced, many[:1], atol=1e-6)
    plain = TextEncoder(loaded, engine="torch", engine_cache=fresh_towers).encode(texts)
    np.testing.assert_array_equal(plain, reference)


def test_a_tag_run_encodes_its_prompts_with_openvino(cli, images, tmp_path, tiny_model, fresh_towers):
    home = tmp_path / "home"
    _index(cli, images, home, tiny_model)
    labels = ",".join(f"label{i}" for i in range(20))  # 20 labels x the templates > AUTO_TEXT_MIN prompts
    out = cli("tag", "--home", home, "--labels", labels, "--json")
    assert out.code == 0, out.err
    assert list(fresh_towers.glob("openvino-*/*/text/model.xml"))


def test_importing_openvino_through_vistag_collects_no_usage_statistics(tmp_path):
    """Plain ``import openvino`` writes a client id under ~/intel for Google Analytics; vistag's does not."""
    # OpenVINO's telemetry keeps quiet in CI jobs (CI=true, TF_BUILD, JENKINS_URL); the control needs a user's shell.
    ci_markers = {"CI", "TF_BUILD", "JENKINS_URL"}
    env = {k: v for k, v in os.environ.items() if k not in ci_markers} | {"HOME": str(tmp_path)}
    code = "from core import ov_engine; ov_engine.version(); ov_engine.cpu_precision()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=Path(__file__).parents[1])
    assert not (tmp_path / "intel").exists()
    subprocess.run([sys.executable, "-c", "import openvino"], env=env, check=True)
    assert (tmp_path / "intel").exists()  # the control: the check above could fail


def test_export_npz_holds_every_indexed_image_with_its_stored_vector(cli, images, tmp_path, tiny_model):
    home = tmp_path / "home"
    _index(cli, images, home, tiny_model)
    out = cli("export", "--home", home, "--format", "npz", "-o", tmp_path / "v.npz")
    assert out.code == 0 and "wrote 24 vectors" in out.err
    data = np.load(tmp_path / "v.npz")
    rows = cli("export", "--home", home, "--format", "json").json()
    assert data["ids"].dtype == np.int64 and data["vectors"].dtype == np.float32
    assert data["ids"].tolist() == [r["id"] for r in rows]
    assert data["uris"].tolist() == [r["uri"] for r in rows]
    stored, _, version = _vectors(home)
    for uri, vector in zip(data["uris"], data["vectors"], strict=True):
        np.testing.assert_array_equal(vector, stored[Path(uri).name])
    assert json.loads(str(data["model"]))["key"] == version["model"]["key"]
    piped = subprocess.run(
        [sys.executable, "-m", "vistag.cli", "export", "--home", str(home), "--format", "npz"],
        capture_output=True,
        check=True,
    )
    again = np.load(io.BytesIO(piped.stdout))
    assert all(np.array_equal(again[k], data[k]) for k in ("ids", "uris", "vectors", "model"))
    assert cli("export", "--home", home, "--format", "npz").code == 2  # not to a text stream


def test_an_export_of_other_weights_is_never_used(tmp_path, fresh_towers, monkeypatch):
    """Random weights share a model identity but not their values: the export's folder names the
    weights, and a cached export that does not match the loaded model is made again, not used."""
    from vistag.synth import make_tiny_model

    first = load_model(parse_model_spec(f"local-dir:{make_tiny_model(tmp_path / 'a', seed=1)}"), "cpu")
    second = load_model(parse_model_spec(f"local-dir:{make_tiny_model(tmp_path / 'b', seed=2)}"), "cpu")
    assert ov_engine.weights_digest(first.model) != ov_engine.weights_digest(second.model)
    assert engines.tower(first, "image", "auto", fresh_towers) is not None
    stale = ov_engine.export_path(fresh_towers, first, "image")
    monkeypatch.setattr(ov_engine, "export_path", lambda root, loaded, which: stale)  # as if they collided
    tower = engines.tower(second, "image", "auto", fresh_towers)
    assert tower is not None and tower.info.min_cosine >= engines.MIN_COSINE
    x = engines.probe_images(second).numpy()
    with torch.inference_mode():
        want = second.model.encode_image(torch.from_numpy(x)).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.min(np.sum(tower(x) * want, axis=1)) >= engines.MIN_COSINE
