"""OpenCLIP model specs, model identity, and loading that fails fast offline.

A model is named by a spec (``ViT-B-32``, ``hf-hub:org/name``, ``local-dir:/path``) plus, for
built-in names, a pretrained tag (``laion2b_s34b_b79k``), a checkpoint path, or ``random``.
Its :class:`ModelIdentity` (spec, tag, embed dim, preprocess config, weights fingerprint) is
stored with every shard and index version, so the query side rebuilds the same transform and
tokenizer and refuses to mix models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
RANDOM = "random"
NETWORK_PROBE_TIMEOUT_S = 3.0
CACHE_SIZE = 2
_CACHE: dict[tuple[Any, ...], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``schema`` is None for built-in names, else 'hf-hub' or 'local-dir'."""

    schema: str | None
    name: str
    pretrained: str | None

    @property
    def open_clip_name(self) -> str:
        return f"{self.schema}:{self.name}" if self.schema else self.name

    def __str__(self) -> str:
        tag = f" ({self.pretrained})" if self.pretrained else ""
        return self.open_clip_name + tag


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two embeddings comparable. Stored as JSON with shards and index versions."""

    model: str
    pretrained: str | None
    embed_dim: int
    preprocess: dict[str, Any] = field(compare=False)
    fingerprint: str = ""

    @property
    def key(self) -> str:
        """Short stable hash of the fields that decide embedding compatibility."""
        blob = json.dumps([self.model, self.pretrained, self.embed_dim, self.fingerprint])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"key": self.key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        return cls(
            model=data["model"],
            pretrained=data.get("pretrained"),
            embed_dim=int(data["embed_dim"]),
            preprocess=dict(data.get("preprocess") or {}),
            fingerprint=data.get("fingerprint", ""),
        )

    def spec(self) -> ModelSpec:
        return parse_model_spec(self.model, self.pretrained)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what OpenCLIP loads from a local-dir folder


def parse_model_spec(
    model: str | None = None, pretrained: str | None = None, known: ModelSpec | None = None
) -> ModelSpec:
    """Parse a model spec and pretrained tag; raise :class:`ModelLoadError` with a clear reason.
    ``known``: a spec parsed before (the one an archive remembers); a built-in name and tag equal
    to its own are taken as they are, without importing OpenCLIP (seconds, with torch) to look
    them up again."""
    model = (model or DEFAULT_MODEL).strip()
    if model.startswith("local-dir:"):
        path = Path(model.removeprefix("local-dir:")).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise ModelLoadError(f"local-dir model {path} has no open_clip_config.json")
        if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
            # OpenCLIP would build the model with random weights: every image re-embedded as noise
            raise ModelLoadError(
                f"local-dir model {path} has no weights file (*.safetensors, *.bin or *.pth)"
            )
        return ModelSpec("local-dir", str(path.resolve()), None)
    if model.startswith("hf-hub:"):
        repo = model.removeprefix("hf-hub:").strip("/")
        if repo.count("/") != 1:
            raise ModelLoadError(f"hf-hub spec must look like hf-hub:org/name, got {model!r}")
        return ModelSpec("hf-hub", repo, None)
    name = model.replace("/", "-")
    if (
        known is not None
        and known.schema is None
        and (name, pretrained) == (known.name, known.pretrained)
        and (os.sep not in str(pretrained) or Path(str(pretrained)).is_file())  # a checkpoint may be gone
    ):
        return known
    import open_clip

    if name not in open_clip.list_models():
        raise ModelLoadError(f"unknown OpenCLIP model {model!r} (see open_clip.list_models())")
    return ModelSpec(None, name, _parse_pretrained(name, pretrained))


def _parse_pretrained(name: str, pretrained: str | None) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained is None:
        if name == DEFAULT_MODEL:
            return DEFAULT_PRETRAINED
        if not tags:
            raise ModelLoadError(f"{name} has no pretrained tags; pass --pretrained PATH or random")
        return tags[0]
    if pretrained == RANDOM or pretrained in tags:
        return pretrained
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path.resolve())
    raise ModelLoadError(
        f"pretrained {pretrained!r} is neither a tag of {name} ({', '.join(tags) or 'none'}), "
        "an existing checkpoint file, nor 'random'"
    )


def _needs_download(spec: ModelSpec) -> bool:
    if spec.schema == "hf-hub":
        return True
    return (
        spec.schema is None and spec.pretrained not in (None, RANDOM) and not Path(spec.pretrained).is_file()
    )


def _hub_reachable() -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=NETWORK_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get(
        "VISTAG_OFFLINE", ""
    ).lower() in ("1", "true", "yes")


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Make huggingface_hub use only its local cache (it reads HF_HUB_OFFLINE once, at import)."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hf_constants

    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _offline_message(spec: ModelSpec, err: Exception) -> str:
    return (
        f"cannot load weights for {spec} without network ({type(err).__name__}); "
        "pass a local model with --model local-dir:/path/to/folder (open_clip_config.json + weights) "
        "or --pretrained /path/to/checkpoint, or download it once while online"
    )


def _fingerprint(spec: ModelSpec) -> str:
    """Identify local weights by size and a hash of their first MiB; tags identify themselves."""
    paths: list[Path] = []
    if spec.schema == "local-dir":
        root = Path(spec.name)
        paths = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    elif spec.pretrained and Path(spec.pretrained).is_file():
        paths = [Path(spec.pretrained)]
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
        digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16] if paths else ""


def model_identity(spec: ModelSpec, cache_file: Path | None = None, record: bool = True) -> ModelIdentity:
    """``spec``'s identity without building the model when ``cache_file`` (JSON) already holds it
    for the same spec, weights fingerprint and OpenCLIP version; else the model is loaded on the
    CPU once and its identity recorded there. A run with nothing to embed (a nightly re-index of
    an unchanged archive) then never builds a model: ViT-L-14 takes over 5 s and 1.7 GB to build
    on a CPU. Workers still check the identity of the model they load against this one.
    ``record=False`` reads the cache but never writes it (a dry run changes nothing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        open_clip_version = version("open_clip_torch")
    except PackageNotFoundError:
        open_clip_version = "?"
    key = json.dumps([spec.schema, spec.name, spec.pretrained, _fingerprint(spec), open_clip_version])
    cached: dict[str, Any] = {}
    if cache_file is not None:
        try:
            cached = json.loads(cache_file.read_text())
            return ModelIdentity.from_dict(cached[key])
        except (OSError, ValueError, KeyError, TypeError):
            cached = cached if isinstance(cached, dict) else {}
    identity = load_model(spec, "cpu").identity
    if cache_file is not None and record:
        cached[key] = identity.to_dict()
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
            os.replace(tmp, cache_file)
        except OSError:  # a read-only home still runs; it just builds the model next time too
            tmp.unlink(missing_ok=True)
    return identity


@dataclass
class LoadedModel:
    """An OpenCLIP model ready for inference, with its transform, tokenizer and identity."""

    model: Any
    transform: Any
    tokenizer: Any
    identity: ModelIdentity
    device: str

    @property
    def half(self) -> bool:
        return self.device.startswith("cuda")


def pick_device(device: str | None = None) -> str:
    """'cuda' when a usable GPU is present and none was asked for, else what was asked or 'cpu'."""
    import torch

    if device and device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but no CUDA GPU is available")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: ModelSpec, device: str | None = None) -> LoadedModel:
    """Build the model, transform and tokenizer for ``spec``; fail within seconds when offline.

    The last ``CACHE_SIZE`` models are kept per process, keyed by spec, device and a fingerprint
    of local weights, so the driver's identity check, the in-process runner's worker and the
    searcher share one load (several seconds for a ViT-B model).
    """
    device = pick_device(device)
    key = (spec, device, _fingerprint(spec))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    loaded = _load(spec, device)
    with _CACHE_LOCK:
        while len(_CACHE) >= CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = loaded
    return loaded


def _load(spec: ModelSpec, device: str) -> LoadedModel:
    import open_clip

    offline = offline_requested() or (_needs_download(spec) and not _hub_reachable())
    precision = "fp16" if device.startswith("cuda") else "fp32"
    pretrained = None if spec.pretrained == RANDOM else spec.pretrained
    try:
        with _hub_offline(offline):
            model, _, transform = open_clip.create_model_and_transforms(
                spec.open_clip_name, pretrained=pretrained, device=device, precision=precision
            )
            tokenizer = open_clip.get_tokenizer(spec.open_clip_name)
    except Exception as err:  # open_clip raises RuntimeError/OSError/ValueError for all of these
        if offline and _needs_download(spec):
            raise ModelLoadError(_offline_message(spec, err)) from err
        raise ModelLoadError(f"cannot load model {spec}: {err}") from err
    model.eval()
    identity = _identity(spec, model, device)
    return LoadedModel(model, transform, tokenizer, identity, device)


def _identity(spec: ModelSpec, model: Any, device: str) -> ModelIdentity:
    import open_clip
    import torch

    preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()}
    size = preprocess.get("size", 224)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    dtype = input_dtype(model)
    with torch.no_grad():
        dim = model.encode_image(torch.zeros((1, 3, *hw), device=device, dtype=dtype)).shape[-1]
    return ModelIdentity(spec.open_clip_name, spec.pretrained, int(dim), preprocess, _fingerprint(spec))


def input_dtype(model: Any) -> Any:
    """The dtype the image tower takes: its first convolution's or linear layer's weights.

    With ``precision="fp16"`` OpenCLIP halves those weights but keeps some parameters (class and
    position embeddings) in float32, so the first parameter does not tell.
    """
    import torch

    for module in getattr(model, "visual", model).modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            return module.weight.dtype
    return torch.float32


def build_transform(identity: ModelIdentity) -> Any:
    """The evaluation transform (PIL RGB image -> CHW float tensor) recorded in ``identity``."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in identity.preprocess.items()}
    allowed = set(PreprocessCfg.__dataclass_fields__)
    return image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items() if k in allowed}), False)
