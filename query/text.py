"""Text encoding: raw queries, prompt-ensembled labels, and a catalog cache by (model, text).

A label's embedding is the normalised mean of the normalised embeddings of its prompts: every
template applied to its name and to each synonym, plus its description as written. Negative
prompts are encoded as written, one embedding each.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core import engines
from core.encode import encode_texts
from core.errors import InputError
from core.models import LoadedModel, ModelIdentity
from query.vocab import SHORT_TEMPLATES, Label

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
    """Encodes text with the text tower of an OpenCLIP model; rows are L2-normalised.

    ``model`` is a loaded model, or a function that loads it (with ``identity``, the model it will
    load): then the model is loaded only for texts no cache holds. With a ``catalog``, embeddings are
    looked up in its ``text_embeddings`` table by (model, text) and new ones stored there unless
    ``remember`` is false (a server, where anyone could fill the database, keeps them in ``memo``
    instead: a bounded in-memory cache shared by its requests).
    """

    def __init__(
        self,
        model: LoadedModel | Callable[[], LoadedModel],
        batch_size: int = 256,
        catalog: Catalog | None = None,
        *,
        identity: ModelIdentity | None = None,
        remember: bool = True,
        memo: TextMemo | None = None,
        engine: str | None = None,
        engine_cache: Path | None = None,
    ):
        self._model = model
        self.engine, self.engine_cache = engines.requested(engine), engine_cache
        self.identity = identity if identity is not None else getattr(model, "identity", None)
        if self.identity is None:
            raise ValueError("a model loader needs the identity of the model it loads")
        self.batch_size, self.catalog, self.remember, self.memo = batch_size, catalog, remember, memo

    @property
    def model(self) -> LoadedModel:
        if callable(self._model) and not isinstance(self._model, LoadedModel):
            self._model = self._model()
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) float32, one L2-normalised row per text."""
        for text in texts:
            if not text.strip():
                raise InputError("empty text query")
            if len(text) > MAX_QUERY_CHARS:
                raise InputError(f"text longer than {MAX_QUERY_CHARS} characters")
        found = self.memo.get_many(texts) if self.memo is not None else {}
        if self.catalog is not None and len(found) < len(set(texts)):
            model_id = self.catalog.find_model_id(self.identity)
            if model_id is not None:
                found |= self.catalog.text_vectors(model_id, [x for x in texts if x not in found])
        missing = list(dict.fromkeys(x for x in texts if x not in found))
        if missing:
            fresh = dict(zip(missing, self._encode(missing), strict=True))
            if self.catalog is not None and self.remember:
                self.catalog.add_text_vectors(self.catalog.model_id(self.identity), fresh)
            found |= fresh
        if self.memo is not None:
            self.memo.put_many(found)
        return np.stack([found[x] for x in texts]).astype(np.float32, copy=False)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        tower = None
        if self.engine == "openvino" or (self.engine == "auto" and len(texts) >= engines.AUTO_TEXT_MIN):
            tower = engines.tower(self.model, "text", self.engine, self.engine_cache)
        return encode_texts(self.model, list(texts), self.batch_size, tower)

    def encode_labels(
        self, labels: Sequence[Label | str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> np.ndarray:
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
            return np.zeros((0, self.identity.embed_dim), np.float32), np.zeros(0, np.int64)
        return self.encode(texts), np.asarray(owners, dtype=np.int64)


def max_per_label(scores: np.ndarray, owners: np.ndarray, n_labels: int) -> np.ndarray | None:
    """(N, M) negative scores -> (N, C) best negative score per label (-inf without negatives)."""
    if scores.shape[1] == 0:
        return None
    out = np.full((scores.shape[0], n_labels), -np.inf)
    for c in np.unique(owners):
        out[:, c] = scores[:, owners == c].max(axis=1)
    return out


class TextMemo:
    """A bounded, thread-safe in-memory cache of text embeddings (the least recently used go first)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        with self._lock:
            found = {x: self._items[x] for x in texts if x in self._items}
            for x in found:
                self._items.move_to_end(x)
        return found

    def put_many(self, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            for text, vector in vectors.items():
                self._items[text] = vector
                self._items.move_to_end(text)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
