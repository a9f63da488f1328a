"""The two towers of an OpenCLIP model as plain functions: texts and images in, L2-normalised
float32 rows out. No Beam, no batching policy, no caching: the pipeline, the searcher and the text
encoder build on these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.models import LoadedModel


def encode_texts(
    model: LoadedModel,
    texts: Sequence[str],
    batch_size: int = 256,
    tower: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """(len(texts), D) float32 L2-normalised text embeddings, no validation or caching. ``tower``
    (an OpenVINO text tower, see :mod:`core.engines`) runs the model instead of torch."""
    import torch

    out = []
    for start in range(0, len(texts), batch_size):
        tokens = model.tokenizer(list(texts[start : start + batch_size])).to(model.device)
        if tower is not None:
            out.append(tower(tokens.numpy()))
            continue
        with torch.inference_mode():
            feats = model.model.encode_text(tokens)
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
    if not out:
        return np.zeros((0, model.identity.embed_dim), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def encode_images(model: LoadedModel, batch: Sequence[Any]) -> np.ndarray:
    """(B, D) float32 L2-normalised rows of a list of (3, H, W) float tensors (the model's full
    transform's output, as ``model.transform(image)`` gives)."""
    import torch

    x = torch.stack(list(batch))
    if model.half:
        x = x.pin_memory().to(model.device, non_blocking=True).half()
    return _encode(model, x)


def forward(model: LoadedModel, x: Any) -> Any:
    """The image tower on a model-ready batch ``x``: (B, D) float32 L2-normalised rows, on the model's device."""
    import torch

    with torch.inference_mode():
        feats = model.model.encode_image(x)
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def _encode(model: LoadedModel, x: Any) -> np.ndarray:
    return forward(model, x).cpu().numpy().astype(np.float32, copy=False)
