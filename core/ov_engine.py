"""OpenCLIP towers exported to OpenVINO IR and run by OpenVINO's CPU plugin.

A tower is traced once per model identity, weights, OpenVINO version and tower (``image`` or
``text``) into ``ROOT/openvino-VERSION/KEY-WEIGHTS/TOWER/model.xml`` (+ ``.bin``, fp32 weights;
WEIGHTS is :func:`weights_digest`: ``random`` weights differ at every load), written in a
temporary folder and renamed into place, so concurrent workers never read a half export and
the first one to finish wins. Running it compiles the IR for the CPU with bf16 inference where
the CPU has it (avx512_bf16 or AMX), else fp32. Callers validate the result against torch
(:mod:`core.engines`): nothing here decides whether an export is good enough.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from core.models import LoadedModel

TOWERS = ("image", "text")


def _openvino() -> Any:
    """The ``openvino`` module, imported without its usage statistics: without a consent file,
    importing it writes a client id and counters under ~/intel to send to Google Analytics. An
    archive tool that promises to work offline sends nothing, so OpenVINO's own stub stands in
    (its converter falls back to it when ``openvino_telemetry`` cannot be imported)."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def version() -> str:
    openvino = _openvino()
    return str(openvino.__version__).split("-")[0]


def cpu_precision() -> str:
    """``bf16`` when OpenVINO's CPU plugin runs bf16 natively on this CPU, else ``f32``."""
    openvino = _openvino()

    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in caps else "f32"


def weights_digest(model: Any) -> str:
    """A short hash of ``model``'s weights: every tensor's name, shape and first and last 4 KiB
    (a few milliseconds for ViT-B-32, and no two trained or random weights share it)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        raw = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(raw[:4096].numpy().tobytes() + raw[-4096:].numpy().tobytes())
    return digest.hexdigest()[:12]


def export_path(root: Path, loaded: LoadedModel, tower: str) -> Path:
    folder = f"{loaded.identity.key}-{weights_digest(loaded.model)}"
    return Path(root) / f"openvino-{version()}" / folder / tower / "model.xml"


def export(loaded: LoadedModel, tower: str, target: Path) -> Path:
    """The IR of ``loaded``'s ``tower`` at ``target`` (see :func:`export_path`): reused when present,
    else traced now."""
    if target.is_file() and target.with_suffix(".bin").is_file():
        return target
    import torch

    openvino = _openvino()

    module, example, shape = _traceable(loaded, tower)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice, OpenVINO's tracer hints
        # OpenCLIP's attention takes another path under inference mode, which trips the trace
        # check (two graphs) without changing any value: the converted graph is validated instead
        traced = torch.jit.trace(module, example, check_trace=False)
        converted = openvino.convert_model(traced, example_input=example)
    converted.reshape({converted.inputs[0]: openvino.PartialShape(shape)})
    tmp = target.parent.with_name(f".{tower}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    try:
        openvino.save_model(converted, str(tmp / "model.xml"), compress_to_fp16=False)
        try:
            os.rename(tmp, target.parent)
        except OSError:  # another process published it first: theirs is the same export
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _traceable(loaded: LoadedModel, tower: str) -> tuple[Any, Any, list[int]]:
    """A module mapping the tower's input to its raw features, an example input, and the IR's
    input shape (the batch dimension left free)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self, method: str) -> None:
            super().__init__()
            self.model = loaded.model
            self.method = method

        def forward(self, x: Any) -> Any:
            return getattr(self.model, self.method)(x)

    if tower == "image":
        size = loaded.identity.preprocess.get("size", 224)
        h, w = (size, size) if isinstance(size, int) else size
        return Tower("encode_image").eval(), torch.zeros((2, 3, h, w)), [-1, 3, h, w]
    if tower == "text":
        tokens = loaded.tokenizer(["a photo", "two dogs on a beach"])
        return Tower("encode_text").eval(), tokens, [-1, int(tokens.shape[1])]
    raise ValueError(f"unknown tower {tower!r}; one of {', '.join(TOWERS)}")


class CompiledTower:
    """An exported tower compiled for the CPU: batch in, (B, D) float32 L2-normalised rows out.

    Calls from several threads take turns: one forward already uses every core it was given.
    """

    def __init__(self, xml: Path, precision: str):
        core = _openvino().Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        self._compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self.precision = precision

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            feats = np.array(self._request.infer({0: np.ascontiguousarray(x)})[0], np.float32)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return feats / np.maximum(norms, 1e-12)
