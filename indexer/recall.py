"""Measure and tune the recall of an approximate index with text and image queries.

Text queries are the hard case (CLIP's modality gap puts them away from the image clusters), so
they are always part of the check: captions encoded by the index's own model (a fixed list of
everyday scenes, plus texts the catalog has already encoded for this model: users' labels and
queries), and image queries sampled from the corpus. Exact top-k comes from a streamed exact
search over the stored vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.encode import encode_texts
from core.models import ModelIdentity, load_model
from indexer import vectors
from indexer.catalog import Catalog
from indexer.choice import IndexChoice, Tuning, tune
from indexer.home import Home

CAPTIONS = tuple(
    f"a photo of {x}"
    for x in (
        "a dog",
        "a cat",
        "a person smiling",
        "a group of people",
        "a child playing",
        "a car on a road",
        "a city street at night",
        "a beach at sunset",
        "mountains with snow",
        "a forest",
        "a river",
        "the sea",
        "a plate of food",
        "a birthday cake",
        "a cup of coffee",
        "a bicycle",
        "a bird in a tree",
        "flowers",
        "a house",
        "a kitchen",
        "a living room",
        "an office",
        "a computer screen",
        "a document",
        "a book",
        "a train",
        "an airplane",
        "a boat",
        "a horse",
        "a cow in a field",
        "a garden",
        "a wedding",
        "a concert",
        "a football match",
        "a museum",
        "a church",
        "a bridge",
        "a skyscraper",
        "a market",
        "a red object",
        "something blue",
        "a green field",
        "a black and white picture",
        "a drawing",
        "a map",
        "a screenshot",
        "a selfie",
        "a baby",
        "an old man",
        "a woman in a dress",
        "a toy",
        "a shoe",
        "a watch",
        "a phone",
        "a guitar",
        "a painting",
        "a statue",
        "snow",
        "rain",
        "a desert",
        "a circle",
        "a square",
        "a star",
        "a triangle",
    )
)


def text_queries(catalog: Catalog, identity: ModelIdentity, model_id: int, limit: int = 200) -> np.ndarray:
    """(Q, D) float32: the captions above and up to ``limit`` texts cached for this model."""
    model = load_model(identity.spec(), "cpu")
    cached = catalog.text_vector_sample(model_id, limit)
    xq = encode_texts(model, list(CAPTIONS))
    return np.concatenate([xq, cached]) if len(cached) else xq


def tune_index(
    home: Home,
    catalog: Catalog,
    identity: ModelIdentity,
    model_id: int,
    locations: Sequence[tuple[int, str, str, int]],
    index: Any,
    choice: IndexChoice,
    k: int = 10,
) -> Tuning:
    """Tune ``index``'s search parameter for recall@k with text and image queries (see module)."""
    dim = identity.embed_dim
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(locations), min(200, len(locations)), replace=False))
    _, images = vectors.gather_vectors(home, [locations[i] for i in pick], dim)
    queries = {"text": text_queries(catalog, identity, model_id), "image": images}
    truth = {kind: vectors.exact_search(home, locations, dim, xq, k)[1] for kind, xq in queries.items()}
    by_id = {loc[0]: loc for loc in locations}

    def fetch(ids: np.ndarray) -> np.ndarray:
        return vectors.gather_vectors(home, [by_id[int(i)] for i in ids], dim)[1]

    def search(xq: np.ndarray, kk: int, rerank: int) -> np.ndarray:
        if rerank:
            return vectors.rerank_search(index, xq, kk, rerank, fetch)[1]
        return index.search(xq, kk)[1]

    return tune(index, choice, search, {kind: (queries[kind], truth[kind]) for kind in queries}, k=k)
