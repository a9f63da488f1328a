"""The seam between the Beam pipeline and OpenCLIP: a RunInference ``ModelHandler``.

Beam's ``PytorchModelHandlerTensor`` insists on a state-dict file, while OpenCLIP builds models
from specs (built-in names, ``hf-hub:``, ``local-dir:``), so this small handler does the two
things a handler does: ``load_model`` builds the model once per worker (shared between threads
by RunInference), ``run_inference`` turns a batch of CHW tensors into L2-normalised embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from vistag.errors import ModelMismatch
from vistag.models import LoadedModel, ModelIdentity, load_model


class OpenClipImageHandler(ModelHandler[Any, PredictionResult, LoadedModel]):
    """Embeds preprocessed image tensors (3, H, W) float32 with an OpenCLIP image tower."""

    def __init__(self, identity: ModelIdentity, *, batch_size: int = 32, device: str | None = None):
        super().__init__()
        self._identity_dict = identity.to_dict()
        self._batch_size = batch_size
        self._device = device

    def load_model(self) -> LoadedModel:
        identity = ModelIdentity.from_dict(self._identity_dict)
        loaded = load_model(identity.spec(), self._device)
        if loaded.identity.key != identity.key:
            raise ModelMismatch(
                f"worker loaded {loaded.identity.model} with key {loaded.identity.key}, "
                f"expected {identity.key}: the model files changed during the run"
            )
        return loaded

    def run_inference(
        self, batch: Sequence[Any], model: LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        embeddings = encode_images(model, batch)
        return [PredictionResult(None, row) for row in embeddings]

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return "vistag"

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(int(t.numel()) * t.element_size() for t in batch)


def encode_images(model: LoadedModel, batch: Sequence[Any]) -> np.ndarray:
    """Embed a list of (3, H, W) float tensors; returns (B, D) float32 L2-normalised rows."""
    import torch

    x = torch.stack(list(batch))
    if model.half:
        x = x.pin_memory().to(model.device, non_blocking=True).half()
    with torch.inference_mode():
        feats = model.model.encode_image(x)
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)
