"""Label vocabularies and prompt templates.

A vocabulary is a plain list (a comma-separated string, or a text file with one label per line
and ``#`` comments) or a YAML/JSON file describing each label::

    labels:
      - name: cat
        synonyms: [kitten, house cat]     # prompts are made for the name and every synonym
        description: a small domesticated feline   # one more prompt, used as written
        parent: animal                    # a parent gets at least its best child's score
        negatives: [a drawing of a cat]   # prompts that must not match better than the label
      - dog                               # a bare name is fine too

(or a mapping ``{cat: {synonyms: [...]}, dog: {}}``). Errors name the file, the line and the
field. How the fields are used is in :mod:`query.text` and :func:`apply_structure`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError

MAX_LABEL_CHARS = 200
VOCAB_SUFFIXES = (".yaml", ".yml", ".json")
LABEL_FILE_SUFFIXES = (".txt", ".lst", ".list", ".csv", *VOCAB_SUFFIXES)
SHORT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
)
LABEL_FIELDS = ("name", "synonyms", "description", "parent", "negatives")


@dataclass(frozen=True)
class Label:
    """One label and what helps to recognise it."""

    name: str
    synonyms: tuple[str, ...] = ()
    description: str | None = None
    parent: str | None = None
    negatives: tuple[str, ...] = field(default=())


def recorded_label(entry: str | dict[str, Any]) -> Label:
    """A label as a tag run recorded it (``params["vocabulary"]``: a dict of its fields, lists for
    tuples; older runs: its name)."""
    if isinstance(entry, str):
        return Label(entry)
    return Label(**{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()})


def named_templates(name: str) -> tuple[str, ...]:
    """``short`` (6 prompts), ``imagenet`` (CLIP's 80 ImageNet prompts), ``none`` ("{}"), or a file."""
    if name == "short":
        return SHORT_TEMPLATES
    if name == "none":
        return ("{}",)
    if name == "imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    path = _as_file(name, "templates file", (".txt",))
    if path is None:
        raise InputError(f"templates {name!r}: not 'short', 'imagenet', 'none' or a file of templates")
    lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines()]
    templates = tuple(x for x in lines if x and not x.startswith("#"))
    for number, text in enumerate(lines, 1):
        if text and not text.startswith("#") and text.count("{}") != 1:
            raise InputError(
                f"{path} line {number}: a template needs exactly one {{}} for the label: {text!r}"
            )
    if not templates:
        raise InputError(f"{path}: no templates")
    return templates


def parse_vocabulary(spec: str | Sequence[str] | Sequence[Label]) -> list[Label]:
    """Labels from a list, a comma-separated string, a text file, or a YAML/JSON vocabulary.

    A string that looks like a path (it has a path separator or a label-file suffix) must name a
    file: a missing label file is an :class:`InputError`, never a label of its own."""
    if isinstance(spec, str):
        path = _as_file(spec, "label file")
        if path is not None:
            return _check_all(_read_file(path), str(path))
        return _check_all([Label(x.strip()) for x in spec.split(",") if x.strip()], "label list")
    labels = [x if isinstance(x, Label) else Label(str(x).strip()) for x in spec]
    return _check_all([x for x in labels if x.name], "label list")


def _as_file(spec: str, what: str, suffixes: Sequence[str] = LABEL_FILE_SUFFIXES) -> Path | None:
    """The file ``spec`` names, or None when ``spec`` is not a path but a value (a list of labels,
    a template name); :class:`InputError` when it looks like a path and no such file exists."""
    text = spec.strip()
    suffixed = Path(text).suffix.lower() in suffixes
    if "," in text and not suffixed:
        return None  # "cat,AC/DC": a list, whatever files the working folder holds
    looks = suffixed or os.sep in text or "/" in text or text.startswith("~")
    path = Path(text).expanduser()
    try:
        if path.is_file():
            return path
        exists = path.exists()
    except OSError:  # a name too long for the filesystem (a long label list) is no file
        exists = False
    if looks:
        hint = "" if suffixed else f" (for one label with a '/' in it, end the list with a comma: '{text},')"
        raise InputError(f"{what} {text!r} {'is not a regular file' if exists else 'does not exist'}{hint}")
    return None


def _read_file(path: Path) -> list[Label]:
    if path.suffix.lower() not in VOCAB_SUFFIXES:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read label file {path}: {err}") from err
        return [Label(x.strip()) for x in lines if x.strip() and not x.lstrip().startswith("#")]
    import yaml

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"cannot read vocabulary {path}: {str(err).splitlines()[0]}") from err
    if isinstance(root, yaml.MappingNode) and [k.value for k, _ in root.value] == ["labels"]:
        root = root.value[0][1]
    if isinstance(root, yaml.SequenceNode):
        return [_label_node(path, node) for node in root.value]
    if isinstance(root, yaml.MappingNode):
        return [_label_node(path, value, name=key) for key, value in root.value]
    raise InputError(f"{path}: expected a list of labels or a mapping of label names")


def _where(path: Path, node: Any) -> str:
    return f"{path} line {node.start_mark.line + 1}"


def _label_node(path: Path, node: Any, name: Any = None) -> Label:
    import yaml

    if isinstance(node, yaml.ScalarNode) and name is None:
        return Label(_text(path, node, "name"))
    data: dict[str, Any] = {}
    if name is not None:
        data["name"] = _text(path, name, "name")
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value not in LABEL_FIELDS:
                raise InputError(
                    f"{_where(path, key)}: unknown field {key.value!r} (fields: {', '.join(LABEL_FIELDS)})"
                )
            data[key.value] = _field(path, key.value, value)
    elif not (isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~")):
        raise InputError(f"{_where(path, node)}: a label must be a name or a mapping of fields")
    if "name" not in data:
        raise InputError(f"{_where(path, node)}: label without a 'name'")
    return Label(**data)


def _field(path: Path, key: str, node: Any) -> Any:
    import yaml

    if key in ("synonyms", "negatives"):
        if not isinstance(node, yaml.SequenceNode):
            raise InputError(f"{_where(path, node)}: field {key!r} must be a list of strings")
        return tuple(_text(path, item, key) for item in node.value)
    return _text(path, node, key)


def _text(path: Path, node: Any, key: str) -> str:
    import yaml

    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        raise InputError(f"{_where(path, node)}: field {key!r} must be a non-empty string")
    return str(node.value).strip()


def _check_all(labels: list[Label], source: str) -> list[Label]:
    if not labels:
        raise InputError("no labels given: pass a file with one label per line or a comma-separated list")
    seen: dict[str, Label] = {}
    for label in labels:
        if len(label.name) > MAX_LABEL_CHARS:
            raise InputError(
                f"{source}: label longer than {MAX_LABEL_CHARS} characters: {label.name[:40]!r}..."
            )
        if label.name in seen and seen[label.name] != label:
            raise InputError(f"{source}: label {label.name!r} is defined twice, differently")
        seen[label.name] = label
    for label in seen.values():
        if label.parent is not None and label.parent == label.name:
            raise InputError(f"{source}: label {label.name!r} is its own parent")
    _check_cycles(seen, source)
    return list(seen.values())


def _check_cycles(labels: dict[str, Label], source: str) -> None:
    for label in labels.values():
        chain, node = {label.name}, label.parent
        while node is not None and node in labels:
            if node in chain:
                raise InputError(f"{source}: labels {sorted(chain)} form a parent cycle")
            chain.add(node)
            node = labels[node].parent


def apply_structure(scores: np.ndarray, labels: Sequence[Label], negatives: np.ndarray | None) -> np.ndarray:
    """Use negatives and parents on raw (N, C) scores; returns new (N, C) float64 scores.

    - Negatives: ``negatives`` (N, C) is, per image and label, the best score of the label's
      negative prompts (-inf where it has none). When a negative fits an image better than the
      label does, the label loses the difference twice: ``s - 2 * max(0, neg - s)``, so the
      label falls below its negative.
    - Parents: a label that is another's parent gets at least the best score of its children
      (a photo of a kitten is a photo of an animal), applied from the leaves up.
    """
    out = np.asarray(scores, dtype=np.float64).copy()
    if negatives is not None:
        out -= 2.0 * np.maximum(0.0, negatives - out)
    index = {label.name: c for c, label in enumerate(labels)}
    for c in _leaves_first(labels):
        parent = labels[c].parent
        if parent in index:
            p = index[parent]
            out[:, p] = np.maximum(out[:, p], out[:, c])
    return out


def _leaves_first(labels: Sequence[Label]) -> list[int]:
    names = {label.name for label in labels}

    def depth(label: Label) -> int:
        d, node = 0, label.parent
        while node in names:
            d += 1
            node = next(x.parent for x in labels if x.name == node)
        return d

    return sorted(range(len(labels)), key=lambda c: -depth(labels[c]))
