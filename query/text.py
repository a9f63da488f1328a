"""Text encoding: raw queries and prompt-ensembled label embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vistag.errors import InputError
from vistag.models import LoadedModel

# A short ensemble in the spirit of CLIP's ImageNet prompts; {} is replaced by the label.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
)
MAX_QUERY_CHARS = 1000


class TextEncoder:
    """Encodes text with the text tower of a loaded OpenCLIP model; rows are L2-normalised."""

    def __init__(self, model: LoadedModel, batch_size: int = 256):
        self.model = model
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) float32, one L2-normalised row per text."""
        import torch

        for text in texts:
            if not text.strip():
                raise InputError("empty text query")
            if len(text) > MAX_QUERY_CHARS:
                raise InputError(f"text longer than {MAX_QUERY_CHARS} characters")
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.model.tokenizer(list(texts[start : start + self.batch_size])).to(self.model.device)
            with torch.inference_mode():
                feats = self.model.model.encode_text(tokens)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, 0), np.float32)

    def encode_labels(self, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
        """(C, D) float32: per label, the normalised mean of its normalised template embeddings."""
        if not templates:
            raise InputError("no prompt templates")
        prompts = [tpl.format(label) if "{}" in tpl else f"{tpl} {label}" for label in labels for tpl in templates]
        feats = self.encode(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)
