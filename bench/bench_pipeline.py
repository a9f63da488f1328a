"""Pipeline throughput: ``vistag index`` images/s against a raw OpenCLIP forward loop, same run.

    python bench/bench_pipeline.py [--images 400] [--model ViT-B-32] [--pretrained random]
                                   [--batch-size 32] [--image-size 320] [--device cpu]

Both sides use the same model, batch size, device and torch threads. The raw baseline feeds
already-preprocessed tensors straight to ``encode_image``; the pipeline side is the whole job
(listing, reading, hashing, JPEG decoding, preprocessing, RunInference, shard writing, catalog
update, index build and publish). The ratio pipeline/raw is the figure to watch (target >= 0.8).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """Write ``n`` JPEG photos-like images (smooth gradients plus noise) of about size x size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = np.stack([np.sin(xx * rng.uniform(1, 9) + c) for c in rng.uniform(0, 6, 3)], -1)
        arr = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 20, (size, size, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img-{i:05d}.jpg", quality=90)


def raw_forward(model_spec: str, pretrained: str, n: int, batch_size: int, device: str) -> float:
    """Images/s of encode_image on preprocessed tensors (the model's ceiling)."""
    import torch

    from pipeline.handler import encode_images
    from vistag.models import load_model, parse_model_spec

    loaded = load_model(parse_model_spec(model_spec, pretrained), device)
    size = loaded.identity.preprocess["size"]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    batch = [torch.randn(3, *hw) for _ in range(batch_size)]
    encode_images(loaded, batch[:2])  # warm-up
    done, start = 0, time.perf_counter()
    while done < n:
        take = min(batch_size, n - done)
        encode_images(loaded, batch[:take])
        done += take
    return n / (time.perf_counter() - start)


def pipeline_run(folder: Path, home: Path, args: argparse.Namespace) -> tuple[float, dict]:
    from vistag import Archive

    start = time.perf_counter()
    with Archive(home, device=args.device) as archive:
        result = archive.index([folder], model=args.model, pretrained=args.pretrained, batch_size=args.batch_size)
    return time.perf_counter() - start, result.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, args.images, args.image_size)
        raw = raw_forward(args.model, args.pretrained, args.images, args.batch_size, args.device)
        seconds, result = pipeline_run(folder, Path(tmp) / "home", args)
        assert result["embedded"] == args.images, result
        again, _ = pipeline_run(folder, Path(tmp) / "home", args)
    rate = args.images / seconds
    print(f"model {args.model} ({args.pretrained}), {args.images} JPEG images {args.image_size}px, "
          f"batch {args.batch_size}, device {args.device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"raw encode_image forward : {raw:8.1f} images/s")
    print(f"vistag index (whole job) : {rate:8.1f} images/s  ({seconds:.1f} s)")
    print(f"ratio pipeline / raw     : {rate / raw:8.2f}")
    print(f"no-change re-run         : {again:8.1f} s ({again / seconds:.2f} of the full run)")


if __name__ == "__main__":
    main()
