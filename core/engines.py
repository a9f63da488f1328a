"""Which engine runs a model's towers: torch (the reference) or OpenVINO on a CPU.

``--engine auto|torch|openvino`` (default ``$VISTAG_ENGINE``, else ``auto``). ``auto`` picks
OpenVINO for a run on a CPU when the ``openvino`` package is installed (bf16 where the CPU has
it: 2.4 times torch fp32 on a 2-core avx512_bf16 machine, see ``bench/bench_pipeline.py``), and
torch on a GPU (fp16, as before). Query-side ``auto`` uses OpenVINO for text only when a call
encodes at least ``AUTO_TEXT_MIN`` texts (a tag run's label prompts): for one query, torch's
few milliseconds beat compiling a model.

An OpenVINO tower is exported once per model identity (:mod:`core.ov_engine`) and validated
every time it is compiled: on a fixed probe batch its embeddings must match torch fp32's with a
minimum cosine of at least ``MIN_COSINE``. The figure travels with the vectors
(:class:`EngineInfo`, in shard and index version manifests). A tower that fails to export,
compile or validate is not used: torch runs instead, after one warning line. So every vector in
an index comes from torch or from an engine that passed this check against it: they are the same
model, and share an index.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from core.models import LoadedModel

ENGINES = ("auto", "torch", "openvino")
ENV_ENGINE = "VISTAG_ENGINE"
ENV_CACHE = "VISTAG_ENGINE_CACHE"
MIN_COSINE = 0.999
AUTO_TEXT_MIN = 64
PROBE_IMAGES = 8
PROBE_TEXTS = (
    "a photo of a dog",
    "a red car parked in the street",
    "two children playing on a beach at sunset",
    "a bowl of fruit on a wooden table",
    "snow on the mountains",
    "a black and white portrait of an old man",
    "a crowded market",
    "a diagram",
)

log = logging.getLogger(__name__)
_TOWERS: dict[tuple[Any, ...], Any] = {}
_TOWERS_LOCK = threading.Lock()


@dataclass(frozen=True)
class EngineInfo:
    """What embedded a set of vectors: engine, precision, and its minimum cosine to torch fp32 on
    the probe batch (1.0 for torch itself)."""

    engine: str
    precision: str
    min_cosine: float
    version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_info(device: str) -> EngineInfo:
    import torch

    precision = "fp16" if str(device).startswith("cuda") else "fp32"
    return EngineInfo("torch", precision, 1.0, str(torch.__version__).split("+")[0])


def requested(value: str | None = None) -> str:
    """The engine asked for (``value``, else ``$VISTAG_ENGINE``, else ``auto``); :class:`InputError`
    for a name that is none of :data:`ENGINES`."""
    name = (value or os.environ.get(ENV_ENGINE) or "auto").strip().lower()
    if name not in ENGINES:
        near = difflib.get_close_matches(name, ENGINES, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise InputError(f"unknown engine {name!r} (choose {', '.join(ENGINES)}){hint}")
    return name


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def check(value: str | None, device: str | None) -> tuple[str, str | None]:
    """The run's engine name and device, checked before any work: ``openvino`` needs the package
    and a CPU (it implies ``cpu`` when no device is given)."""
    name = requested(value)
    if name != "openvino":
        return name, device
    if not openvino_installed():
        raise InputError("engine openvino needs the openvino package: pip install openvino")
    if device and device not in ("cpu", "auto"):
        raise InputError(f"engine openvino runs on the CPU, not {device}: pass --device cpu or --engine auto")
    return name, "cpu"


def resolve(name: str, device: str) -> str:
    """``torch`` or ``openvino`` for a model on ``device`` (``auto``: OpenVINO on a CPU when installed)."""
    if name == "auto":
        return "openvino" if device == "cpu" and openvino_installed() else "torch"
    return name


def cache_root(home: str | os.PathLike[str] | None) -> Path | None:
    """Where exports live: ``$VISTAG_ENGINE_CACHE``, else HOME/engines."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path(home) / "engines" if home is not None else None


def tower(loaded: LoadedModel, which: str, name: str, root: Path | None) -> Any | None:
    """The validated OpenVINO ``which`` tower ("image" or "text") of ``loaded`` when ``name``
    resolves to OpenVINO on its device, else None (run torch). The tower's :class:`EngineInfo` is
    its ``info``. Built once per process and model; a failure warns once and returns None."""
    if root is None or loaded.device != "cpu" or resolve(name, loaded.device) != "openvino":
        return None
    key = (loaded.identity.key, which, str(root), id(loaded.model))
    with _TOWERS_LOCK:  # one export at a time; the others wait for it rather than export it again
        if key not in _TOWERS:
            _TOWERS[key] = _build(loaded, which, root)
        return _TOWERS[key]


def _build(loaded: LoadedModel, which: str, root: Path) -> Any | None:
    from core import ov_engine

    model = loaded.identity.model
    try:
        path = ov_engine.export_path(root, loaded, which)
        existed = path.is_file()
        try:
            compiled, cosine = _validate(loaded, which, ov_engine.export(loaded, which, path))
            if existed and not cosine >= MIN_COSINE:
                raise ValueError(f"cached export matches only to cosine {cosine:.5f}")
        except Exception:
            if not existed:
                raise
            shutil.rmtree(path.parent, ignore_errors=True)  # damaged or stale: export it again, once
            compiled, cosine = _validate(loaded, which, ov_engine.export(loaded, which, path))
    except Exception as err:  # anything OpenVINO or the trace raises: torch still works
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        log.warning(
            "OpenVINO %s tower of %s unusable (%s: %s); using torch", which, model, type(err).__name__, reason
        )
        return None
    if not cosine >= MIN_COSINE:  # NaN fails too
        log.warning(
            "OpenVINO %s tower of %s matches torch fp32 only to cosine %.5f (< %s); using torch",
            which,
            model,
            cosine,
            MIN_COSINE,
        )
        return None
    compiled.info = EngineInfo("openvino", compiled.precision, round(cosine, 6), ov_engine.version())
    return compiled


def _validate(loaded: LoadedModel, which: str, xml: Path) -> tuple[Any, float]:
    """The compiled tower and the minimum cosine of its probe embeddings to torch fp32's."""
    import torch

    from core import ov_engine

    compiled = ov_engine.CompiledTower(xml, ov_engine.cpu_precision())
    probe = probe_images(loaded) if which == "image" else loaded.tokenizer(list(PROBE_TEXTS))
    with torch.inference_mode():
        encode = loaded.model.encode_image if which == "image" else loaded.model.encode_text
        want = torch.nn.functional.normalize(encode(probe).float(), dim=-1).numpy()
    got = compiled(probe.numpy())
    return compiled, float(np.min(np.sum(got * want, axis=1)))


def probe_images(loaded: LoadedModel) -> Any:
    """``PROBE_IMAGES`` fixed photo-like inputs (smooth colour gradients and noise), normalised as
    the model's transform does: a (B, 3, H, W) float32 tensor."""
    import torch

    cfg = loaded.identity.preprocess
    size = cfg.get("size", 224)
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(20261128)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    images = []
    for _ in range(PROBE_IMAGES):
        waves = [np.sin(xx * rng.uniform(1, 9) + yy * rng.uniform(0, 5) + c) for c in rng.uniform(0, 6, 3)]
        img = (np.stack(waves) * 0.4 + 0.5 + rng.normal(0, 0.08, (3, h, w))).clip(0, 1)
        images.append(img)
    mean = np.asarray(cfg.get("mean", (0.5, 0.5, 0.5)), np.float64).reshape(3, 1, 1)
    std = np.asarray(cfg.get("std", (0.5, 0.5, 0.5)), np.float64).reshape(3, 1, 1)
    return torch.from_numpy(((np.stack(images) - mean) / std).astype(np.float32))
