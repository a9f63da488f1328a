"""Text encoding: raw queries, prompt-ensembled labels, and a catalog cache by (model, text).

A label's embedding is the normalised mean of the normalised embeddings of its prompts: every
template applied to its name and to each synonym, plus its description as written. Negative
prompts are encoded as written, one embedding each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from query.vocab import SHORT_TEMPLATES, Label
from vistag.errors import InputError
from vistag.models import LoadedModel, encode_texts

if TYPE_CHECKING:
    from indexer.catalog import Catalog

DEFAULT_TEMPLATES = SHORT_TEMPLATES
MAX_QUERY_CHARS = 1000


def label_prompts(label: Label, templates: Sequence[str]) -> list[str]:
    """Every prompt that stands for ``label``."""
    names = (label.name, *label.synonyms)
    prompts = [tpl.format(n) if "{}" in tpl else f"{tpl} {n}" for n in names for tpl in templates]
    return prompts + ([label.description] if label.description else [])


class TextEncoder:
    """Encodes text with the text tower of a loaded OpenCLIP model; rows are L2-normalised.

    With a ``catalog`` (and the model's catalog id), embeddings are cached in the catalog's
    ``text_embeddings`` table, so a label set is encoded once per model.
    """

    def __init__(self, model: LoadedModel, batch_size: int = 256, catalog: Catalog | None = None):
        self.model = model
        self.batch_size = batch_size
        self.catalog = catalog
        self._model_id = catalog.model_id(model.identity) if catalog is not None else None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) float32, one L2-normalised row per text."""
        for text in texts:
            if not text.strip():
                raise InputError("empty text query")
            if len(text) > MAX_QUERY_CHARS:
                raise InputError(f"text longer than {MAX_QUERY_CHARS} characters")
        if self.catalog is None:
            return self._encode(texts)
        cached = self.catalog.text_vectors(self._model_id, texts)
        missing = list(dict.fromkeys(x for x in texts if x not in cached))
        if missing:
            fresh = dict(zip(missing, self._encode(missing), strict=True))
            self.catalog.add_text_vectors(self._model_id, fresh)
            cached |= fresh
        return np.stack([cached[x] for x in texts]).astype(np.float32, copy=False)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(self.model, list(texts), self.batch_size)

    def encode_labels(self, labels: Sequence[Label | str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
        """(C, D) float32: per label, the normalised mean of its normalised prompt embeddings."""
        if not templates:
            raise InputError("no prompt templates")
        labels = [x if isinstance(x, Label) else Label(x) for x in labels]
        prompts = [label_prompts(label, templates) for label in labels]
        flat = self.encode([p for group in prompts for p in group])
        out, start = [], 0
        for group in prompts:
            out.append(flat[start : start + len(group)].mean(axis=0))
            start += len(group)
        feats = np.stack(out)
        return (feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

    def encode_negatives(self, labels: Sequence[Label]) -> tuple[np.ndarray, np.ndarray]:
        """All negative prompts: (M, D) float32 embeddings and (M,) int64 owning label index."""
        owners = [c for c, label in enumerate(labels) for _ in label.negatives]
        texts = [n for label in labels for n in label.negatives]
        if not texts:
            return np.zeros((0, self.model.identity.embed_dim), np.float32), np.zeros(0, np.int64)
        return self.encode(texts), np.asarray(owners, dtype=np.int64)


def max_per_label(scores: np.ndarray, owners: np.ndarray, n_labels: int) -> np.ndarray | None:
    """(N, M) negative scores -> (N, C) best negative score per label (-inf without negatives)."""
    if scores.shape[1] == 0:
        return None
    out = np.full((scores.shape[0], n_labels), -np.inf)
    for c in np.unique(owners):
        out[:, c] = scores[:, owners == c].max(axis=1)
    return out
