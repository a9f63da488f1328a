"""Decoding JPEGs where the model is: in batches on its GPU (nvJPEG through torchvision).

The read stage does everything for a JPEG but the pixel decode (read, SHA-256, the bounds checks
of :mod:`core.decode`, a 1/8-scale decode for the perceptual hash, date taken, orientation) and
ships its bytes as :class:`Encoded`, inside a chunk's :class:`Pending` pixels. The model handler
decodes them with :class:`BatchDecoder` on its device, applies the EXIF orientation and the
model's own resize and crop there (the PIL steps of OpenCLIP's transform: same size,
interpolation and crop), and merges them with the pixels decoded on CPU in row order.

Only what nvJPEG decodes is shipped (see :func:`nvjpeg_candidate`): Huffman-coded baseline,
extended or progressive frames of 8-bit samples, one component or three in YCbCr with ordinary
chroma subsampling. Anything it still refuses is decoded on CPU (:func:`core.decode.decode_image`
and the split transform) in the handler's thread, image by image; only when that fails too is
the image a ``decode`` failure.

Pixels differ from the CPU path's by resampling: the device resizes the full image once with
torch's antialiased filter, while the CPU path first reduces a large JPEG by libjpeg's scaled DCT
and Pillow's box filter (to a short side of at least the model's size), so the device's pixels are
those of a full-resolution Pillow decode to within rounding (mean absolute difference under 0.5
levels of 255 measured at 224 pixels), and differ from the CPU path's by that reduction (under 1
level at 224 pixels, up to 5 at the 32 pixels of the tiny test model); embeddings keep a cosine
of at least 0.99 (``tests/test_gpu_decode.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.decode import DEFAULT_MAX_PIXELS, MAX_ASPECT, DecodeError, decode_image, jpeg_header
from core.models import ModelIdentity

if TYPE_CHECKING:
    import torch

PHASH_DRAFT = 64  # the read stage decodes a shipped JPEG at the scale that keeps both sides >= this
DECODE_BATCH_PIXELS = 1 << 27  # decoded pixels held at once on the device (384 MiB of RGB, 4x as float)
_NVJPEG_FRAMES = (0xC0, 0xC1, 0xC2)  # Huffman baseline, extended, progressive
_RGB_IDS = (82, 71, 66)  # component ids 'R', 'G', 'B': libjpeg reads such a file as RGB, not YCbCr


@dataclass(frozen=True)
class Encoded:
    """A JPEG left for the device to decode: its bytes, EXIF ``orientation`` (1..8) and coded pixels."""

    data: bytes
    orientation: int
    area: int


@dataclass(frozen=True)
class Pending:
    """A chunk's pixels with some images still encoded: ``pixels`` (C, 3, H, W) uint8 holds the rows
    decoded on CPU in row order, ``encoded`` the (row, :class:`Encoded`) of the others."""

    pixels: np.ndarray
    encoded: tuple[tuple[int, Encoded], ...]

    @property
    def rows(self) -> int:
        return len(self.pixels) + len(self.encoded)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes) + sum(len(item.data) for _, item in self.encoded)


def nvjpeg_candidate(data: bytes) -> bool:
    """Whether nvJPEG decodes ``data`` as the CPU path would, judged from its header only (see the
    module docstring); False for anything else, a JPEG the bounds checks refuse included."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    try:
        header = jpeg_header(data)
    except DecodeError:
        return False
    if header.marker not in _NVJPEG_FRAMES or header.bits != 8 or not header.height or not header.width:
        return False
    if len(header.ids) == 1:
        return True
    if len(header.ids) != 3 or header.transform == 0 or header.ids == _RGB_IDS:
        return False  # 4 components (CMYK, YCCK) or RGB-coded: libjpeg converts them otherwise
    (luma_h, luma_v), *chroma = header.sampling
    return luma_h in (1, 2) and luma_v in (1, 2) and all(factors == (1, 1) for factors in chroma)


@dataclass(frozen=True)
class Geometry:
    """The PIL part of the model's transform: ``size`` (H, W), ``mode`` (shortest: resize then centre
    crop; squash: resize to size) and ``interpolation`` (bicubic or bilinear)."""

    size: tuple[int, int]
    mode: str
    interpolation: str

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of ``height`` x ``width`` is resized to before the centre crop."""
        th, tw = self.size
        if self.mode == "squash":
            return th, tw
        if th == tw:  # torchvision's Resize(int): shortest side to size, the other truncated
            short, long = min(height, width), max(height, width)
            other = int(th * long / short)
            return (th, other) if height <= width else (other, th)
        ratio = min(height / th, width / tw)  # OpenCLIP's ResizeKeepRatio (shortest)
        return round(height / ratio), round(width / ratio)


def geometry(identity: ModelIdentity) -> Geometry | None:
    """The model's resize and crop when this module can reproduce them on a device, else None
    (``resize_mode`` longest, whose padding is left to the CPU path)."""
    cfg = identity.preprocess
    mode = cfg.get("resize_mode") or "shortest"
    if mode not in ("shortest", "squash"):
        return None
    size = cfg.get("size", 224)
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    return Geometry(hw, mode, interpolation)


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) ``image`` turned upright for EXIF ``orientation`` 1..8 (as Pillow's exif_transpose)."""
    import torch

    if orientation == 2:
        return image.flip(2)
    if orientation == 3:
        return image.flip(1, 2)
    if orientation == 4:
        return image.flip(1)
    if orientation == 5:
        return image.transpose(1, 2)
    if orientation == 6:
        return torch.rot90(image, -1, (1, 2))
    if orientation == 7:
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return torch.rot90(image, 1, (1, 2))
    return image


def crop_aspect(image: torch.Tensor, max_aspect: float = MAX_ASPECT) -> torch.Tensor:
    """(..., H, W) ``image`` centre-cropped to long/short <= ``max_aspect`` (as :func:`core.decode.crop_aspect`)."""
    h, w = image.shape[-2:]
    if max(w, h) <= max_aspect * min(w, h):
        return image
    if w > h:
        new_w = int(h * max_aspect)
        left = (w - new_w) // 2
        return image[..., :, left : left + new_w]
    new_h = int(w * max_aspect)
    top = (h - new_h) // 2
    return image[..., top : top + new_h, :]


def fit(images: torch.Tensor, shape: Geometry) -> torch.Tensor:
    """(B, 3, H, W) uint8 upright ``images`` of one size aspect-cropped, resized (antialiased, from
    full resolution) and centre-cropped: (B, 3, *shape.size) uint8."""
    import torch
    from torchvision.transforms.functional import center_crop

    x = crop_aspect(images.float())
    size = shape.resized(*x.shape[-2:])
    x = torch.nn.functional.interpolate(
        x, size=size, mode=shape.interpolation, antialias=True, align_corners=False
    )
    out = x.round_().clamp_(0, 255).to(torch.uint8)
    return out if tuple(out.shape[-2:]) == shape.size else center_crop(out, list(shape.size))


class BatchDecoder:
    """Decodes :class:`Encoded` JPEGs on ``device`` (nvJPEG on CUDA, libjpeg on CPU) into the model's
    (3, H, W) uint8 pixels; what the device refuses, on CPU as the read stage would have."""

    def __init__(self, identity: ModelIdentity, device: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        from pipeline.preprocess import split_transform

        shape = geometry(identity)
        if shape is None:
            raise ValueError(f"no device decoding for resize mode {identity.preprocess.get('resize_mode')}")
        self.shape = shape
        self.device = device
        self.max_pixels = max_pixels
        self._split = split_transform(identity)
        self._draft = int(max(self._split.shape[1:]))

    def decode(self, items: Sequence[Encoded]) -> tuple[torch.Tensor, list[int]]:
        """(N, 3, H, W) uint8 on the device, one row per item (zeros where it failed), and the indices
        of the items the device could not decode, in order."""
        import torch

        out = torch.zeros((len(items), 3, *self.shape.size), dtype=torch.uint8, device=self.device)
        failed: list[int] = []
        for group in _groups(items, DECODE_BATCH_PIXELS):
            images = self._decode_group([items[i] for i in group])
            failed += [i for i, image in zip(group, images, strict=True) if image is None]
            upright = [
                (i, orient(im, items[i].orientation))
                for i, im in zip(group, images, strict=True)
                if im is not None
            ]
            del images
            for size in {tuple(image.shape) for _, image in upright}:  # one resize per size of image
                rows = [i for i, image in upright if tuple(image.shape) == size]
                batch = torch.stack([image for _, image in upright if tuple(image.shape) == size])
                out[torch.tensor(rows, device=self.device)] = fit(batch, self.shape)
            del upright  # the full-size images of this group go before the next group's
        return out, sorted(failed)

    def _decode_group(self, items: Sequence[Encoded]) -> list[torch.Tensor | None]:
        """Full-size (3, H, W) uint8 images on the device; None for those it refuses (a refused batch
        is decoded again image by image to find them)."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        data = [torch.from_numpy(np.frombuffer(item.data, np.uint8).copy()) for item in items]
        try:
            images = decode_jpeg(data, device=self.device, mode=ImageReadMode.RGB)
        except Exception:  # nvJPEG's and libjpeg's refusals are RuntimeErrors of any wording
            if len(items) == 1:
                return [None]
            return [self._decode_group([item])[0] for item in items]
        return [image if image.ndim == 3 and image.shape[0] == 3 else None for image in images]

    def cpu_pixels(self, data: bytes) -> np.ndarray:
        """(3, H, W) uint8 pixels of ``data`` by the CPU path (:func:`core.decode.decode_image` and the
        split transform); raises :class:`DecodeError` or what preprocessing raises."""
        from pipeline.preprocess import to_pixels

        decoded = decode_image(data, max_pixels=self.max_pixels, draft_size=self._draft)
        arr = to_pixels(self._split.to_image(decoded.image))
        if arr.shape != self._split.shape:
            raise ValueError(f"preprocessed to {arr.shape}, expected {self._split.shape}")
        return arr

    def merge(self, pending: Pending) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        """The chunk's (N, 3, H, W) uint8 pixels on the device in row order, and (row, reason) of the
        rows that neither the device nor the CPU could decode (left out of the N)."""
        import torch

        rows = [row for row, _ in pending.encoded]
        decoded, refused = self.decode([item for _, item in pending.encoded])
        late: list[tuple[int, str]] = []
        for i in refused:
            try:
                decoded[i] = torch.from_numpy(self.cpu_pixels(pending.encoded[i][1].data)).to(self.device)
            except DecodeError as err:
                late.append((rows[i], err.reason))
            except Exception as err:  # a bad file must never stop the run
                late.append((rows[i], f"{type(err).__name__}: {err}"))
        out = torch.empty((pending.rows, 3, *self.shape.size), dtype=torch.uint8, device=self.device)
        on_cpu = torch.ones(pending.rows, dtype=torch.bool)
        on_cpu[rows] = False
        out[on_cpu.nonzero().flatten().to(self.device)] = torch.from_numpy(pending.pixels).to(self.device)
        out[torch.tensor(rows, dtype=torch.long, device=self.device)] = decoded
        if not late:
            return out, late
        dropped = {row for row, _ in late}
        keep = [row for row in range(pending.rows) if row not in dropped]
        return out[torch.tensor(keep, dtype=torch.long, device=self.device)], late


def _groups(items: Sequence[Encoded], budget: int) -> list[list[int]]:
    """Indices of ``items`` cut into consecutive groups of at most ``budget`` coded pixels (an
    image over the budget alone)."""
    groups: list[list[int]] = []
    total = budget + 1
    for i, item in enumerate(items):
        if total + item.area > budget:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += item.area
    return groups
