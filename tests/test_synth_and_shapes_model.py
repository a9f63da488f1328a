"""Tests for vistag.synth and the tiny committed test model tests/fixtures/shapes-clip."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistag import synth

MODEL_DIR = Path(__file__).resolve().parent / "fixtures" / "shapes-clip"


# ----------------------------------------------------------------------------- synth


def _digest(items):
    h = hashlib.sha256()
    for path, spec in items:
        h.update(path.name.encode())
        h.update(path.read_bytes())
        h.update(repr(spec).encode())
    return h.hexdigest()


def test_api_constants():
    assert set(synth.COLORS) == {"red", "green", "blue", "yellow", "purple", "orange", "black", "white"}
    assert synth.SHAPES == ("circle", "square", "triangle", "star", "cross", "ring")
    assert synth.SIZES == ("small", "large")
    assert all(len(v) == 3 and all(0 <= c <= 255 for c in v) for v in synth.COLORS.values())
    assert len(synth.LABELS) == 48 and "red circle" in synth.LABELS


def test_held_out_combos_leave_every_colour_and_shape_in_training():
    assert 4 <= len(synth.HELD_OUT) <= 8
    for c, s in synth.HELD_OUT:
        assert c in synth.COLORS and s in synth.SHAPES
    train = {(c, s) for c in synth.COLORS for s in synth.SHAPES} - synth.HELD_OUT
    assert {c for c, _ in train} == set(synth.COLORS)
    assert {s for _, s in train} == set(synth.SHAPES)
    # spread out: no colour or shape is held out twice
    assert len({c for c, _ in synth.HELD_OUT}) == len(synth.HELD_OUT)
    assert len({s for _, s in synth.HELD_OUT}) == len(synth.HELD_OUT)


def test_shapespec_and_label():
    spec = synth.ShapeSpec("red", "circle", "small")
    assert synth.label(spec) == "red circle"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.color = "blue"  # type: ignore[misc]
    with pytest.raises(ValueError):
        synth.ShapeSpec("magenta", "circle", "small")


def test_caption():
    rng = np.random.default_rng(0)
    one = [synth.ShapeSpec("orange", "star", "small")]
    caps = {synth.caption(one, rng) for _ in range(50)}
    assert all("orange star" in c for c in caps)
    assert any(c.startswith("a photo of") for c in caps)
    assert any("an orange" in c for c in caps) and not any("a orange" in c for c in caps)
    two = [synth.ShapeSpec("red", "circle", "large"), synth.ShapeSpec("green", "square", "small")]
    c2 = synth.caption(two, np.random.default_rng(1))
    assert "red circle" in c2 and "green square" in c2 and " and " in c2
    assert synth.caption(one, np.random.default_rng(5)) == synth.caption(one, np.random.default_rng(5))


@pytest.mark.parametrize("background", ["plain", "noise"])
@pytest.mark.parametrize("color", ["white", "black", "yellow"])
def test_draw_shape_is_visible(background, color):
    img = synth.draw(
        [synth.ShapeSpec(color, "square", "large")],
        image_size=96,
        background=background,
        rng=np.random.default_rng(3),
    )
    assert img.mode == "RGB" and img.size == (96, 96)
    a = np.asarray(img, np.float32)
    target = np.asarray(synth.COLORS[color], np.float32)
    near = np.abs(a - target).max(-1) < 30
    # a large square covers a good part of the image; the background does not look like it
    assert 0.08 < near.mean() < 0.6


def test_draw_deterministic():
    specs = [synth.ShapeSpec("blue", "ring", "small"), synth.ShapeSpec("white", "cross", "large")]
    a = synth.draw(specs, image_size=64, background="noise", rng=np.random.default_rng(9))
    b = synth.draw(specs, image_size=64, background="noise", rng=np.random.default_rng(9))
    c = synth.draw(specs, image_size=64, background="noise", rng=np.random.default_rng(10))
    assert a.tobytes() == b.tobytes() != c.tobytes()


def test_make_corpus_deterministic(tmp_path):
    a = synth.make_corpus(tmp_path / "a", 40, seed=7, two_shape_fraction=0.3)
    b = synth.make_corpus(tmp_path / "b", 40, seed=7, two_shape_fraction=0.3)
    c = synth.make_corpus(tmp_path / "c", 40, seed=8, two_shape_fraction=0.3)
    assert [p.name for p, _ in a] == [p.name for p, _ in b]
    assert _digest(a) == _digest(b) != _digest(c)


def test_make_corpus_formats_and_sizes(tmp_path):
    items = synth.make_corpus(tmp_path, 60, seed=1)
    assert len(items) == 60
    assert len({p.name for p, _ in items}) == 60
    formats, sizes = set(), set()
    for path, spec in items:
        assert path.parent == tmp_path and path.is_file()
        assert isinstance(spec, synth.ShapeSpec)
        with Image.open(path) as im:
            assert im.mode == "RGB"
            formats.add((path.suffix, im.format))
            sizes.add(im.size)
            assert min(im.size) in (64, 96, 160)
    assert formats == {(".jpg", "JPEG"), (".png", "PNG")}
    assert any(w != h for w, h in sizes)
    assert any(w == h for w, h in sizes)

    only_png = synth.make_corpus(tmp_path / "png", 5, seed=1, formats=("png",), image_sizes=(50,))
    for path, _ in only_png:
        assert path.suffix == ".png" and min(Image.open(path).size) == 50


def test_make_corpus_combos(tmp_path):
    combos = sorted(synth.HELD_OUT)
    items = synth.make_corpus(tmp_path, 30, seed=2, combos=combos, two_shape_fraction=0.5)
    assert {(s.color, s.shape) for _, s in items} <= set(combos)


def test_styles_api():
    assert synth.STYLES[0] == "classic"
    assert {"classic", "varied", synth.HELD_OUT_STYLE} <= set(synth.STYLES)
    assert set(synth.TRAIN_STYLES) == {"classic", "varied"}
    assert synth.HELD_OUT_STYLE not in synth.TRAIN_STYLES
    with pytest.raises(ValueError, match="style"):
        synth.draw([synth.ShapeSpec("red", "circle")], rng=np.random.default_rng(0), style="cubist")
    with pytest.raises(ValueError, match="style"):
        synth.make_corpus(Path("/nonexistent-never-created"), 1, style="cubist")


def test_classic_style_is_the_default():
    specs = [synth.ShapeSpec("green", "star"), synth.ShapeSpec("black", "ring", "small")]
    a = synth.draw(specs, image_size=80, background="noise", rng=np.random.default_rng(3))
    b = synth.draw(specs, image_size=80, background="noise", rng=np.random.default_rng(3), style="classic")
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("style", ["varied", synth.HELD_OUT_STYLE])
def test_other_styles_deterministic_and_distinct_from_classic(style):
    specs = [synth.ShapeSpec("blue", "triangle"), synth.ShapeSpec("white", "cross", "small")]

    def draw(seed, style=style):
        return synth.draw(specs, image_size=96, rng=np.random.default_rng(seed), style=style)

    a, b, c = draw(9), draw(9), draw(10)
    assert a.mode == "RGB" and a.size == (96, 96)
    assert a.tobytes() == b.tobytes() != c.tobytes()
    assert a.tobytes() != draw(9, "classic").tobytes()


@pytest.mark.parametrize("style", ["varied", synth.HELD_OUT_STYLE])
@pytest.mark.parametrize("color", list(synth.COLORS))
def test_other_styles_keep_colours_true(style, color):
    # a large square in the named colour covers a good part of the image; the background
    # (any hue in these styles) never looks like it
    for seed in range(3):
        img = synth.draw(
            [synth.ShapeSpec(color, "square", "large")],
            image_size=96,
            rng=np.random.default_rng(seed),
            style=style,
        )
        a = np.asarray(img, float)
        near = np.linalg.norm(a - np.asarray(synth.COLORS[color], float), axis=-1) < 70
        assert 0.05 < near.mean() < 0.6, (seed, near.mean())


def test_held_out_style_corpus(tmp_path):
    style = synth.HELD_OUT_STYLE
    a = synth.make_corpus(tmp_path / "a", 30, seed=7, style=style, two_shape_fraction=0.3)
    b = synth.make_corpus(tmp_path / "b", 30, seed=7, style=style, two_shape_fraction=0.3)
    c = synth.make_corpus(tmp_path / "c", 30, seed=8, style=style, two_shape_fraction=0.3)
    classic = synth.make_corpus(tmp_path / "classic", 30, seed=7, two_shape_fraction=0.3)
    assert [s for _, s in a] == [s for _, s in b]
    assert _digest(a) == _digest(b) != _digest(c)
    assert _digest(a) != _digest(classic)
    for path, _ in a:
        with Image.open(path) as im:
            assert im.mode == "RGB" and min(im.size) in (64, 96, 160)


def test_make_corpus_speed(tmp_path):
    import time

    t = time.perf_counter()
    synth.make_corpus(tmp_path, 100, seed=3)
    assert time.perf_counter() - t < 5


# ----------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def shapes_clip():
    open_clip = pytest.importorskip("open_clip")
    torch = pytest.importorskip("torch")
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        name = f"local-dir:{MODEL_DIR}"
        model, _, preprocess = open_clip.create_model_and_transforms(name)
        tokenizer = open_clip.get_tokenizer(name)
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    model.eval()
    with torch.no_grad():
        text = tokenizer([f"a photo of a {lab}." for lab in synth.LABELS])
        text_features = torch.nn.functional.normalize(model.encode_text(text).float(), dim=-1)
    return model, preprocess, tokenizer, text_features


def _image_features(model, preprocess, items):
    import torch

    batch = torch.stack([preprocess(Image.open(p)) for p, _ in items])
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_image(batch).float(), dim=-1)


def test_model_files_small():
    files = {f.name for f in MODEL_DIR.iterdir()}
    assert {"open_clip_config.json", "open_clip_model.safetensors", "README.md"} <= files
    assert sum(f.stat().st_size for f in MODEL_DIR.iterdir()) < 20_000_000  # loads in well under a second


def test_model_loads_offline(shapes_clip):
    model, preprocess, tokenizer, text_features = shapes_clip
    assert text_features.shape == (48, model.text_projection.shape[1])
    assert tokenizer(["a red circle"]).shape[-1] == model.context_length
    x = preprocess(Image.new("RGB", (100, 70), (128, 128, 128)))
    assert x.shape == (3, 64, 64)


@pytest.fixture(scope="module")
def scored(shapes_clip, tmp_path_factory):
    """Similarities of fresh generated images to the 48 label prompts."""
    model, preprocess, _, text_features = shapes_clip
    root = tmp_path_factory.mktemp("shapes-eval")
    general = synth.make_corpus(root / "general", 96, seed=4242)
    held = synth.make_corpus(root / "held", 48, seed=4343, combos=sorted(synth.HELD_OUT))
    items = general + held
    sims = _image_features(model, preprocess, items) @ text_features.T
    truth = np.array([synth.LABELS.index(synth.label(s)) for _, s in items])
    return sims.numpy(), truth, len(general)


def test_zero_shot_accuracy(scored):
    sims, truth, n_general = scored
    acc = float((sims[:n_general].argmax(1) == truth[:n_general]).mean())
    assert acc >= ACC_THRESHOLD, acc  # measured 0.854 for this seed, chance 1/48


def test_zero_shot_held_out_combos(scored):
    sims, truth, n_general = scored
    acc = float((sims[n_general:].argmax(1) == truth[n_general:]).mean())
    assert acc >= HELD_OUT_THRESHOLD, acc  # measured 0.79 for this seed, chance 1/48


@pytest.fixture(scope="module")
def scored_held_out_style(shapes_clip, tmp_path_factory):
    """Similarities of images drawn by the renderer the model never saw in training."""
    model, preprocess, _, text_features = shapes_clip
    root = tmp_path_factory.mktemp("shapes-eval-style")
    items = synth.make_corpus(root, 96, seed=4444, style=synth.HELD_OUT_STYLE)
    sims = _image_features(model, preprocess, items) @ text_features.T
    truth = np.array([synth.LABELS.index(synth.label(s)) for _, s in items])
    return sims.numpy(), truth


def test_zero_shot_accuracy_held_out_style(scored_held_out_style):
    sims, truth = scored_held_out_style
    acc = float((sims.argmax(1) == truth).mean())
    assert acc >= ACC_THRESHOLD, acc  # issue 16: at least 0.7 on a renderer never seen in training


def test_text_to_image_retrieval_held_out(scored):
    sims, truth, _ = scored
    precisions = []
    for c, s in sorted(synth.HELD_OUT):
        li = synth.LABELS.index(f"{c} {s}")
        top = np.argsort(-sims[:, li])[:5]
        precisions.append(float((truth[top] == li).mean()))
    # each held-out label has 7-16 relevant images among 144 (chance ~0.07)
    assert np.mean(precisions) >= 0.6, precisions  # measured 1.0


# thresholds: a clear margin below what the committed model measures (see its README)
ACC_THRESHOLD = 0.7
HELD_OUT_THRESHOLD = 0.4
