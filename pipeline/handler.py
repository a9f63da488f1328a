"""The seam between the Beam pipeline and OpenCLIP: a RunInference ``ModelHandler``.

Beam's ``PytorchModelHandlerTensor`` insists on a state-dict file, while OpenCLIP builds models
from specs (built-in names, ``hf-hub:``, ``local-dir:``), so this small handler does the two
things a handler does: ``load_model`` builds the model once per worker process (shared between
threads and bundles by RunInference), ``run_inference`` turns pixels into L2-normalised
embeddings.

Each example is a whole chunk of images, (N, 3, H, W) uint8, already batched by the stage before,
so the job runs it with ``with_no_batching()``: RunInference applies no ``BatchElements`` and nothing
is ever buffered until the end of a bundle (Beam's Dask runner drops what a DoFn emits from
``finish_bundle``). The chunk is cut into model batches of ``batch_size`` inside
:meth:`OpenClipImageHandler.run_inference`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from vistag.errors import ModelMismatch
from vistag.models import LoadedModel, ModelIdentity, load_model


class OpenClipImageHandler(ModelHandler[np.ndarray, PredictionResult, LoadedModel]):
    """Embeds chunks of pixels (N, 3, H, W) uint8 into (N, D) float32 rows with an OpenCLIP image tower."""

    def __init__(self, identity: ModelIdentity, *, batch_size: int = 32, device: str | None = None):
        super().__init__()
        self._identity_dict = identity.to_dict()
        self._batch_size = batch_size
        self._device = device
        self._normalize: Callable[[Any], Any] | None = None

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
        self, batch: Sequence[np.ndarray], model: LoadedModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        if self._normalize is None:
            from pipeline.preprocess import split_transform

            self._normalize = split_transform(ModelIdentity.from_dict(self._identity_dict)).normalize
        dim = int(self._identity_dict["embed_dim"])
        return [
            PredictionResult(None, encode_pixels(model, pixels, self._normalize, self._batch_size, dim))
            for pixels in batch
        ]

    def batch_elements_kwargs(self) -> dict[str, int]:
        # Each example is a chunk already; were this handler ever batched, each batch holds one
        # chunk and is emitted from ``process``. The job skips batching altogether (``embed``).
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_metrics_namespace(self) -> str:
        return "vistag"

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(int(np.asarray(pixels).nbytes) for pixels in batch)


def encode_pixels(
    model: LoadedModel, pixels: np.ndarray, normalize: Callable[[Any], Any], batch_size: int, dim: int
) -> np.ndarray:
    """Embed (N, C, H, W) uint8 ``pixels`` in model batches; returns (N, dim) float32 L2-normalised rows.

    ``normalize`` maps a float (B, C, H, W) tensor in [0, 1] to the model's input (the tail of
    the transform, see :func:`pipeline.preprocess.split_transform`); it runs on the model's device.
    """
    import torch

    pixels = np.asarray(pixels)
    if not len(pixels):
        return np.zeros((0, dim), np.float32)
    out = []
    for start in range(0, len(pixels), max(1, batch_size)):
        x = torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size]))
        x = normalize(x.to(model.device).float().div_(255))
        out.append(_encode(model, x.half() if model.half else x))
    return np.concatenate(out)


def encode_images(model: LoadedModel, batch: Sequence[Any]) -> np.ndarray:
    """Embed a list of (3, H, W) float tensors (the full transform's output); returns (B, D) float32."""
    import torch

    x = torch.stack(list(batch))
    if model.half:
        x = x.pin_memory().to(model.device, non_blocking=True).half()
    return _encode(model, x)


def _encode(model: LoadedModel, x: Any) -> np.ndarray:
    """Run the image tower on a model-ready batch ``x``; returns (B, D) float32 L2-normalised rows."""
    import torch

    with torch.inference_mode():
        feats = model.model.encode_image(x)
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)
