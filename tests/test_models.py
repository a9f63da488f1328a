"""Model specs, identity, and the offline error for real pretrained weights (no download)."""

from __future__ import annotations

import time

import pytest

from core.errors import ModelLoadError
from core.models import ModelIdentity, build_transform, load_model, parse_model_spec


def test_parse_specs(tmp_path, tiny_model):
    spec = parse_model_spec()
    assert (spec.schema, spec.name, spec.pretrained) == (None, "ViT-B-32", "laion2b_s34b_b79k")
    assert parse_model_spec("ViT-B/32", "openai").name == "ViT-B-32"
    assert parse_model_spec("ViT-B-32", "random").pretrained == "random"
    assert parse_model_spec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K").schema == "hf-hub"
    assert parse_model_spec(tiny_model).schema == "local-dir"
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"0")
    assert parse_model_spec("ViT-B-32", str(ckpt)).pretrained == str(ckpt)


@pytest.mark.parametrize(
    "model, pretrained, message",
    [
        ("NoSuchNet", None, "unknown OpenCLIP model"),
        ("ViT-B-32", "no-such-tag", "neither a tag"),
        ("hf-hub:justone", None, "org/name"),
        ("local-dir:/does/not/exist", None, "open_clip_config.json"),
    ],
)
def test_bad_specs(model, pretrained, message):
    with pytest.raises(ModelLoadError, match=message):
        parse_model_spec(model, pretrained)


@pytest.mark.parametrize(
    "env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://127.0.0.1:9"}]
)
def test_pretrained_weights_offline_fail_fast_with_advice(monkeypatch, tmp_path, env):
    """Offline (asked, or the hub unreachable): a clear error within seconds, not a minute's hang."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        load_model(parse_model_spec("ViT-B-32", "laion2b_s34b_b79k"), "cpu")
    assert time.monotonic() - start < 30
    assert "local-dir:" in str(err.value) and "\n" not in str(err.value)


def test_local_model_identity_round_trip(tiny_model):
    loaded = load_model(parse_model_spec(tiny_model), "cpu")
    identity = loaded.identity
    assert identity.embed_dim == 32 and identity.preprocess["size"] in (32, [32, 32]) and identity.fingerprint
    again = ModelIdentity.from_dict(identity.to_dict())
    assert again == identity and again.key == identity.key
    from PIL import Image

    tensor = build_transform(identity)(Image.new("RGB", (50, 40)))
    assert tuple(tensor.shape) == (3, 32, 32)


def test_changed_local_weights_change_the_key(tmp_path):
    from vistag.synth import make_tiny_model

    a = load_model(parse_model_spec("local-dir:" + str(make_tiny_model(tmp_path / "a", seed=1))), "cpu")
    b = load_model(parse_model_spec("local-dir:" + str(make_tiny_model(tmp_path / "b", seed=2))), "cpu")
    assert a.identity.key != b.identity.key


def test_identity_cache_skips_building_the_model_until_the_weights_change(tmp_path, monkeypatch):
    import shutil

    from core import models
    from vistag.synth import make_tiny_model

    folder = make_tiny_model(tmp_path / "m", seed=3)
    spec = parse_model_spec("local-dir:" + str(folder))
    builds = []
    real = models._load
    monkeypatch.setattr(models, "_load", lambda s, d: builds.append(s) or real(s, d))
    monkeypatch.setattr(models, "_CACHE", {})  # the process's own model cache would hide builds
    cache = tmp_path / "home" / "models" / "identities.json"
    dry = models.model_identity(spec, cache, record=False)
    assert len(builds) == 1 and not cache.exists()  # a dry run writes nothing
    first = models.model_identity(spec, cache)
    assert first == dry and cache.exists()
    models._CACHE.clear()
    again = models.model_identity(spec, cache)
    assert len(builds) == 1 and again == first and again.key == first.key  # from the file: no build
    # other weights in the same folder: another fingerprint, so the model is built again
    other = make_tiny_model(tmp_path / "other", seed=4)
    for weights in other.glob("*.safetensors"):
        shutil.copy(weights, folder / weights.name)
    models._CACHE.clear()
    changed = models.model_identity(spec, cache)
    assert len(builds) == 2 and changed.key != first.key
    cache.write_text("{not json")  # a damaged cache is rebuilt, never an error
    models._CACHE.clear()
    assert models.model_identity(spec, cache) == changed and len(builds) == 3


def test_no_change_index_run_builds_no_model(tmp_path, corpus, tiny_model, monkeypatch):
    from core import models
    from vistag import Archive

    with Archive(tmp_path / "home", device="cpu") as archive:
        archive.index([corpus.root], model=tiny_model)
    builds = []
    real = models._load
    monkeypatch.setattr(models, "_load", lambda s, d: builds.append(s) or real(s, d))
    monkeypatch.setattr(models, "_CACHE", {})
    with Archive(tmp_path / "home", device="cpu") as archive:
        result = archive.index([corpus.root], model=tiny_model)
    assert result.embedded == 0 and result.plan.counts()["new"] == 0 and result.plan.counts()["unchanged"] > 0
    assert builds == []


def test_local_dir_without_weights_is_refused(tmp_path, cli):
    """OpenCLIP would build such a model with random weights and every image would be re-embedded as noise."""
    from vistag.synth import make_tiny_model

    folder = make_tiny_model(tmp_path / "m")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelLoadError, match="no weights file"):
        parse_model_spec(f"local-dir:{folder}")
    out = cli("index", tmp_path, "--home", tmp_path / "h", "--model", f"local-dir:{folder}")
    assert out.code != 0 and "no weights file" in out.err and len(out.err.strip().splitlines()) == 1
