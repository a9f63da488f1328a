"""The seam between the Beam pipeline and OpenCLIP: a RunInference ``ModelHandler``.

Beam's ``PytorchModelHandlerTensor`` insists on a state-dict file, while OpenCLIP builds models
from specs (built-in names, ``hf-hub:``, ``local-dir:``), so this small handler does the two
things a handler does: ``load_model`` builds the model once per worker process (shared between
threads and bundles by RunInference), ``run_inference`` turns pixels into L2-normalised
embeddings.

On a machine with several GPUs (device ``cuda`` with no index, and more than one visible), the
process holds one model copy per GPU (:class:`Replicas`): each chunk goes to a copy whose GPU is
free, so the worker threads keep every GPU busy. ``cuda:N`` pins the run to one GPU;
``CUDA_VISIBLE_DEVICES`` chooses which GPUs are seen.

Each example is a whole chunk of images, (N, 3, H, W) uint8, already batched by the stage before,
so the job runs it with ``with_no_batching()``: RunInference applies no ``BatchElements`` and nothing
is ever buffered until the end of a bundle (Beam's Dask runner drops what a DoFn emits from
``finish_bundle``). The chunk is cut into model batches of ``batch_size`` inside
:meth:`OpenClipImageHandler.run_inference`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from core import engines
from core.decode import DEFAULT_MAX_PIXELS
from core.encode import forward
from core.errors import ModelMismatch
from core.models import LoadedModel, ModelIdentity, load_model, pick_device
from pipeline.gpu_decode import BatchDecoder, Pending

CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 256
# One forward at a time per GPU model: with several decode threads (see pipeline.runners), the
# others keep decoding while one thread feeds the GPU, and activations are never held twice.
_GPU_LOCKS: dict[int, threading.Lock] = {}
_GPU_LOCKS_GUARD = threading.Lock()
_LOCK_TYPE = type(_GPU_LOCKS_GUARD)


@dataclass(frozen=True)
class Embedded:
    """A chunk's (E, D) float32 embeddings ``xb`` and the (row, reason) of the rows that neither the
    device nor the CPU could decode at inference (left out of ``xb``; see :mod:`pipeline.gpu_decode`)."""

    xb: np.ndarray
    failed: tuple[tuple[int, str], ...]


class Replicas:
    """One model copy per device, each used by one thread at a time where it is a GPU; on a CPU,
    the model's validated OpenVINO image ``tower`` when the run's engine chose one."""

    def __init__(self, models: Sequence[LoadedModel], tower: Any | None = None):
        if not models:
            raise ValueError("Replicas needs at least one model")
        self.models = list(models)
        self.tower = tower
        info = tower.info if tower is not None else engines.torch_info(self.models[0].device)
        self.engine = json.dumps(info.to_dict(), sort_keys=True)  # what the shards record
        self._turn = itertools.count()

    @property
    def device(self) -> str:
        return self.models[0].device

    def pick(self) -> LoadedModel:
        """A copy whose GPU lock is free right now, else the next in turn (one copy: that one)."""
        if len(self.models) == 1:
            return self.models[0]
        start = next(self._turn)
        order = [self.models[(start + i) % len(self.models)] for i in range(len(self.models))]
        for model in order:
            if not _busy(model):
                return model
        return order[0]


def replica_devices(device: str) -> list[str]:
    """The devices that get a model copy: every visible GPU for ``cuda`` (no index), else ``device``."""
    if device != "cuda":
        return [device]
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count > 1 else [device]


class OpenClipImageHandler(ModelHandler[np.ndarray, PredictionResult, Replicas]):
    """Embeds chunks of pixels (N, 3, H, W) uint8 into (N, D) float32 rows with an OpenCLIP image tower."""

    def __init__(
        self,
        identity: ModelIdentity,
        *,
        batch_size: int | None = None,
        device: str | None = None,
        engine: str = "torch",
        engine_cache: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__()
        self._identity = identity
        self._batch_size = batch_size
        self._device = device
        self._engine = engine
        self._engine_cache = engine_cache
        self._max_pixels = max_pixels
        self._normalize: Callable[[Any], Any] | None = None
        self._decoders: dict[str, BatchDecoder] = {}  # per device, made on the first Pending chunk

    def load_model(self) -> Replicas:
        identity = self._identity
        models = []
        for device in self.devices():
            loaded = load_model(identity.spec(), device)
            if loaded.identity.key != identity.key:
                raise ModelMismatch(
                    f"worker loaded {loaded.identity.model} with key {loaded.identity.key}, "
                    f"expected {identity.key}: the model files changed during the run"
                )
            models.append(loaded)
        root = Path(self._engine_cache) if self._engine_cache else None
        return Replicas(models, engines.tower(models[0], "image", self._engine, root))

    def devices(self) -> list[str]:
        """The devices this worker process loads a model copy on (see :func:`replica_devices`)."""
        return replica_devices(pick_device(self._device))

    def run_inference(
        self,
        batch: Sequence[np.ndarray | Pending],
        model: Replicas,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One result per chunk: its (E, D) float32 embeddings, or :class:`Embedded` when rows left
        encoded (:class:`~pipeline.gpu_decode.Pending`) could not be decoded."""
        if self._normalize is None:
            from pipeline.preprocess import split_transform

            self._normalize = split_transform(self._identity).normalize
        dim = self._identity.embed_dim
        size = self._batch_size or default_batch_size(model.device)
        results = []
        for pixels in batch:
            replica = model.pick()
            late: list[tuple[int, str]] = []
            if isinstance(pixels, Pending):  # JPEGs decoded where the model is, merged in row order
                pixels, late = self._decoder(replica.device).merge(pixels)
            xb = encode_pixels(replica, pixels, self._normalize, size, dim, model.tower)
            results.append(PredictionResult(None, Embedded(xb, tuple(late)) if late else xb, model.engine))
        return results

    def _decoder(self, device: str) -> BatchDecoder:
        if device not in self._decoders:
            self._decoders[device] = BatchDecoder(self._identity, device, self._max_pixels)
        return self._decoders[device]

    def batch_elements_kwargs(self) -> dict[str, int]:
        # Each example is a chunk already; were this handler ever batched, each batch holds one
        # chunk and is emitted from ``process``. The job skips batching altogether (``embed``).
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_metrics_namespace(self) -> str:
        return "vistag"

    def get_num_bytes(self, batch: Sequence[np.ndarray | Pending]) -> int:
        return sum(p.nbytes if isinstance(p, Pending) else int(np.asarray(p).nbytes) for p in batch)


def default_batch_size(device: str) -> int:
    """Images per forward when none is asked for: 256 on a GPU (a ViT-B/32 forward of 32 leaves an
    H100 mostly idle), 32 on CPU (larger batches gain nothing there and cost memory)."""
    return GPU_BATCH_SIZE if str(device).startswith("cuda") else CPU_BATCH_SIZE


def encode_pixels(
    model: LoadedModel,
    pixels: Any,
    normalize: Callable[[Any], Any],
    batch_size: int,
    dim: int,
    tower: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Embed (N, C, H, W) uint8 ``pixels`` (an array, or a tensor on any device) in model batches;
    returns (N, dim) float32 L2-normalised rows.

    ``normalize`` maps a float (B, C, H, W) tensor in [0, 1] to the model's input (the tail of
    the transform, see :func:`pipeline.preprocess.split_transform`); it runs on the model's device.
    ``tower`` (an OpenVINO image tower, see :mod:`core.engines`) runs the model instead of torch.
    """
    import torch

    if not isinstance(pixels, torch.Tensor):
        pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(pixels)))
    if not len(pixels):
        return np.zeros((0, dim), np.float32)
    batches = [pixels[start : start + batch_size] for start in range(0, len(pixels), max(1, batch_size))]
    if tower is not None:
        return np.concatenate([tower(normalize(x.cpu().float().div_(255)).numpy()) for x in batches])
    if model.half:  # page-locked uint8 (4x smaller than float), pinned before taking the GPU
        batches = [x.pin_memory() if x.device.type == "cpu" else x for x in batches]
    with _device_lock(model):  # queue the copies and forwards; others decode meanwhile
        out = [
            forward(model, _half(model, normalize(x.to(model.device, non_blocking=True).float().div_(255))))
            for x in batches
        ]
        feats = torch.cat(out)
    # the one wait for the GPU, outside the lock: the next chunk's work is queued behind this one
    return feats.cpu().numpy().astype(np.float32, copy=False)


def _half(model: LoadedModel, x: Any) -> Any:
    return x.half() if model.half else x


def _device_lock(model: LoadedModel) -> contextlib.AbstractContextManager[Any]:
    """The model's GPU lock (one forward at a time), or no lock on CPU (torch threads itself there)."""
    if not model.half:
        return contextlib.nullcontext()
    with _GPU_LOCKS_GUARD:
        return _GPU_LOCKS.setdefault(id(model.model), threading.Lock())


def _busy(model: LoadedModel) -> bool:
    """Whether another thread is running ``model`` on its GPU now (a CPU model is never busy)."""
    lock = _device_lock(model)
    return isinstance(lock, _LOCK_TYPE) and lock.locked()
