"""Camera RAW decoding: the embedded JPEG preview and the half-size demosaic that
``decode_image`` uses, against a full demosaic of the same files (the baseline, measured in the
same run).

    python bench/bench_raw.py [--size 6000x4000] [--preview 1620x1080] [--files 3] [--draft 224]

Generates ``--files`` DNGs (pidng) of a smooth synthetic scene, each as a 12-bit RGGB mosaic
with a JPEG preview chained after its first IFD (as cameras write one), and times per file:
``preview`` (``decode_image`` takes the preview: it is at least ``--draft`` px), ``half``
(``decode_image`` on the same file without its preview: LibRaw half-size demosaic) and ``full``
(LibRaw's default AHD demosaic at full size, camera white balance, 8-bit: what a decoder
without either shortcut would do). Prints images/s and the ratio to ``full``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.decode import decode_image  # noqa: E402
from vistag.synth.raw import dng, with_preview  # noqa: E402


def scene(width: int, height: int, seed: int) -> np.ndarray:
    """(height, width, 3) uint8: colour gradients with a few discs, some texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, 1 - x / width], axis=-1) * 180 + 30
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.2) * height
        rgb[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(20, 235, 3)
    rgb += rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def files(size: tuple[int, int], preview: tuple[int, int], count: int) -> list[tuple[bytes, bytes]]:
    """(with preview, without) DNG bytes of ``count`` scenes."""
    out = []
    for seed in range(count):
        rgb = scene(*size, seed)
        small = Image.fromarray(rgb).resize(preview, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=90)
        plain = dng(rgb)
        out.append((with_preview(plain, buf.getvalue()), plain))
    return out


def full_demosaic(data: bytes) -> tuple[int, ...]:
    import rawpy

    with rawpy.imread(io.BytesIO(data)) as raw:
        return raw.postprocess(use_camera_wb=True, output_bps=8).shape


def rate(work: list[bytes], decode: object) -> tuple[float, object]:
    start = time.perf_counter()
    for data in work:
        result = decode(data)  # type: ignore[operator]
    return len(work) / (time.perf_counter() - start), result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="6000x4000", help="sensor width x height")
    parser.add_argument("--preview", default="1620x1080", help="embedded JPEG preview width x height")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument(
        "--draft", type=int, default=224, help="the model input side (decode_image draft_size)"
    )
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    preview = tuple(int(v) for v in args.preview.split("x"))
    pairs = files(size, preview, args.files)  # type: ignore[arg-type]
    print(f"{args.files} DNGs of {size[0]}x{size[1]} (preview {preview[0]}x{preview[1]}), draft {args.draft}")
    full, shape = rate([p for _, p in pairs], full_demosaic)
    print(f"full demosaic (baseline) {full:7.2f} images/s  1.00x  -> {shape}")
    for name, work in (("preview", [w for w, _ in pairs]), ("half-size demosaic", [p for _, p in pairs])):
        speed, out = rate(work, lambda d: decode_image(d, draft_size=args.draft, name="x.dng").image.size)
        print(f"{name:24} {speed:7.2f} images/s  {speed / full:5.2f}x -> {out}")


if __name__ == "__main__":
    main()
