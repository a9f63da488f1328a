"""Label vocabularies (YAML/JSON with synonyms, descriptions, parents, negatives), templates, cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import InputError
from query.text import TextEncoder, label_prompts
from query.vocab import Label, apply_structure, named_templates, parse_vocabulary

YAML = """\
labels:
  - name: cat
    synonyms: [kitten, house cat]
    description: a small domesticated feline
    parent: animal
    negatives: [a drawing of a cat]
  - dog
  - name: animal
"""


def test_yaml_vocabulary(tmp_path):
    f = tmp_path / "vocab.yaml"
    f.write_text(YAML)
    cat, dog, animal = parse_vocabulary(str(f))
    assert cat == Label(
        "cat", ("kitten", "house cat"), "a small domesticated feline", "animal", ("a drawing of a cat",)
    )
    assert dog == Label("dog") and animal == Label("animal")
    prompts = label_prompts(cat, ("a photo of a {}.",))
    assert prompts == [
        "a photo of a cat.",
        "a photo of a kitten.",
        "a photo of a house cat.",
        "a small domesticated feline",
    ]


def test_json_and_mapping_forms(tmp_path):
    f = tmp_path / "vocab.json"
    f.write_text(json.dumps({"cat": {"synonyms": ["kitten"]}, "dog": None}))
    assert [x.name for x in parse_vocabulary(str(f))] == ["cat", "dog"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("labels:\n  - name: cat\n    synonyms: kitten\n", "line 3: field 'synonyms' must be a list"),
        ("labels:\n  - name: cat\n    colour: red\n", "line 3: unknown field 'colour'"),
        ("labels:\n  - synonyms: [a]\n", "line 2: label without a 'name'"),
        ("labels:\n  - name: a\n    parent: b\n  - name: b\n    parent: a\n", "parent cycle"),
        ("labels: [\n", "cannot read vocabulary"),
        ("labels:\n  - name: ''\n", "line 2: field 'name' must be a non-empty string"),
    ],
)
def test_vocabulary_errors_name_line_and_field(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=message):
        parse_vocabulary(str(f))


def test_named_and_file_templates(tmp_path):
    assert len(named_templates("imagenet")) == 80 and all("{}" in t for t in named_templates("imagenet"))
    assert named_templates("none") == ("{}",)
    f = tmp_path / "tpl.txt"
    f.write_text("# mine\na sketch of {}\n{} in the wild\n")
    assert named_templates(str(f)) == ("a sketch of {}", "{} in the wild")
    f.write_text("no placeholder\n")
    with pytest.raises(InputError, match="line 1"):
        named_templates(str(f))


def test_negatives_and_parents():
    labels = [
        Label("cat", parent="animal", negatives=("drawing",)),
        Label("dog", parent="animal"),
        Label("animal"),
    ]
    scores = np.array([[0.30, 0.20, 0.10], [0.25, 0.28, 0.05]])
    negatives = np.array([[0.35, -np.inf, -np.inf], [0.10, -np.inf, -np.inf]])
    out = apply_structure(scores, labels, negatives)
    assert out[0, 0] == pytest.approx(0.30 - 2 * 0.05)  # the drawing fits better than the cat
    assert out[1, 0] == pytest.approx(0.25)  # the negative fits worse: no penalty
    assert out[0, 2] == pytest.approx(0.20) and out[1, 2] == pytest.approx(0.28)  # parent >= best child


def test_text_embeddings_are_cached_in_the_catalog(indexed_home, monkeypatch):
    from vistag import Archive

    home, _ = indexed_home
    with Archive(home) as archive:
        encoder = TextEncoder(archive.searcher.model(), catalog=archive.catalog)
        first = encoder.encode(["a red circle", "a blue star"])
        calls = []
        monkeypatch.setattr(
            encoder, "_encode", lambda texts: calls.append(texts) or np.zeros((len(texts), 32))
        )
        again = encoder.encode(["a blue star", "a red circle"])
        np.testing.assert_array_equal(again, first[::-1])
        assert calls == []  # both came from the catalog
        encoder.encode(["a new text"])
        assert calls == [["a new text"]]
