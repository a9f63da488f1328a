"""A tiny OpenCLIP model with random weights, written as a ``local-dir:`` model folder.

Fast to build and to run on CPU (32-pixel images, 32-d embeddings): for tests and benchmarks
that need a real model but not a meaningful one.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_PREPROCESS = {
    "size": 32,
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write a ``local-dir:`` OpenCLIP model with random weights (about 7 MB) into ``folder``;
    return ``folder`` (the model spec is ``"local-dir:" + str(folder)``)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": TINY_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder
