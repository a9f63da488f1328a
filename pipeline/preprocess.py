"""The model's preprocessing, split where the image becomes a tensor.

OpenCLIP's evaluation transform is ``[resize, crop, mode] + ToTensor + [Normalize]``. The
pipeline runs the first part while decoding and ships ``uint8`` pixels (4x smaller than
float32) to the inference stage, which runs the rest on the model's device: ``ToTensor`` is a
division by 255, so the split gives the same numbers as the whole transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.models import ModelIdentity, build_transform

_TO_TENSOR = frozenset({"ToTensor", "MaybeToTensor"})


@dataclass(frozen=True)
class SplitTransform:
    """``to_image``: PIL image -> PIL image at model size; ``normalize``: (B, C, H, W) float in [0, 1] ->
    model input; ``shape``: the (C, H, W) of :func:`to_pixels` output."""

    to_image: Callable[[Any], Any]
    normalize: Callable[[Any], Any]
    shape: tuple[int, int, int]


def split_transform(identity: ModelIdentity) -> SplitTransform:
    """Split the evaluation transform recorded in ``identity`` at its ``ToTensor`` step."""
    steps: Sequence[Any] = list(getattr(build_transform(identity), "transforms", []))
    names = [type(step).__name__ for step in steps]
    cut = next((i for i, name in enumerate(names) if name in _TO_TENSOR), None)
    if cut is None:
        raise ValueError(f"cannot split the transform of {identity.model}: no ToTensor step in {names}")
    size = identity.preprocess.get("size", 224)
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return SplitTransform(_chain(steps[:cut]), _chain(steps[cut + 1 :]), (3, *hw))


def _chain(steps: Sequence[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def apply(x: Any) -> Any:
        for step in steps:
            x = step(x)
        return x

    return apply


def to_pixels(image: Any) -> np.ndarray:
    """A PIL image as a (C, H, W) uint8 array (C = 3 for RGB)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {arr.dtype} (mode {getattr(image, 'mode', '?')})")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
