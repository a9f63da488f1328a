"""Model specs, identity, and the offline error for real pretrained weights (no download)."""

from __future__ import annotations

import time

import pytest

from vistag.errors import ModelLoadError
from vistag.models import ModelIdentity, build_transform, load_model, parse_model_spec


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


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://127.0.0.1:9"}])
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
    from tests.conftest import make_tiny_model

    a = load_model(parse_model_spec("local-dir:" + str(make_tiny_model(tmp_path / "a", seed=1))), "cpu")
    b = load_model(parse_model_spec("local-dir:" + str(make_tiny_model(tmp_path / "b", seed=2))), "cpu")
    assert a.identity.key != b.identity.key
