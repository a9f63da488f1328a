"""JPEG decoding on the GPU (pipeline.gpu_decode) against the CPU decode pool, same run.

    python bench/bench_gpu_decode.py [--images 8192] [--size 500x375] [--model ViT-B-32]
                                     [--pretrained random] [--device cuda] [--processes N]

Figures, all from this run, on the same photo-like JPEGs of ``--size``:

- decode, CPU pool: the read stage as the job runs it without GPU decoding (read, SHA-256, decode,
  resize, crop) through a pool of one process per core (``--processes``): the baseline;
- read stage, GPU decoding: the same stage when JPEGs are left for the GPU (read, SHA-256, bounds
  checks, a 1/8-scale decode for the perceptual hash): what the CPU must still do;
- decode, GPU: :class:`pipeline.gpu_decode.BatchDecoder` on chunks of 256 (nvJPEG, orientation,
  resize and crop on the device), synchronised;
- raw forward: the model on one batch resident on the device (``bench_pipeline.raw_forward``);
- the whole job, ``vistag index --gpu-decode`` and ``--no-gpu-decode``: whole command, and the
  steady-state rate (N - N/2) / (t(N) - t(N/2)) that cancels start-up; ratio GPU / CPU decoding,
  and the minimum cosine between the two runs' stored vectors.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import decode_rate, make_images, raw_forward, stored  # noqa: E402

CHUNK = 256


def gpu_decode_rate(folder: Path, model: str, pretrained: str, device: str) -> float:
    """Images/s of BatchDecoder over every file in chunks of ``CHUNK`` (bytes already in memory)."""
    import torch

    from core.decode import jpeg_header
    from core.models import load_model, parse_model_spec
    from pipeline.gpu_decode import BatchDecoder, Encoded

    identity = load_model(parse_model_spec(model, pretrained), "cpu").identity
    items = []
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        header = jpeg_header(data)
        items.append(Encoded(data, 1, header.width * header.height))
    decoder = BatchDecoder(identity, device)
    decoder.decode(items[:CHUNK])  # warm-up: nvJPEG handles, allocator
    torch.cuda.synchronize() if device.startswith("cuda") else None
    start = time.perf_counter()
    for first in range(0, len(items), CHUNK):
        out, failed = decoder.decode(items[first : first + CHUNK])
        assert not failed, failed
    torch.cuda.synchronize() if device.startswith("cuda") else None
    return len(items) / (time.perf_counter() - start)


def job_seconds(folder: Path, home: Path, args: argparse.Namespace, gpu_decode: bool) -> float:
    """Seconds of the whole ``vistag index`` command (a fresh process, imports included)."""
    command = [sys.executable, "-m", "vistag.cli", "index", str(folder), "--home", str(home)]
    command += ["--model", args.model, "--pretrained", args.pretrained, "--device", args.device]
    command += ["--gpu-decode" if gpu_decode else "--no-gpu-decode"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def jobs(folder: Path, tmp: Path, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Per mode: (images/s of the whole command, steady-state images/s)."""
    half = tmp / "half"
    half.mkdir()
    for f in sorted(folder.iterdir())[: args.images // 2]:
        os.link(f, half / f.name)
    out = {}
    for mode, gpu in (("GPU decode", True), ("CPU decode", False)):
        t_half = job_seconds(half, tmp / f"home-half-{gpu}", args, gpu)
        t_full = job_seconds(folder, tmp / f"home-{gpu}", args, gpu)
        added = args.images - args.images // 2
        out[mode] = (args.images / t_full, added / (t_full - t_half) if t_full > t_half else float("inf"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the JPEGs")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="decode pool size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VISTAG_ENGINE_CACHE"] = str(Path(tmp) / "engines")
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, tmp: Path) -> None:
    from pipeline.handler import default_batch_size
    from pipeline.job import POOL_THREADS

    width, height = (int(v) for v in args.size.lower().split("x"))
    folder = tmp / "images"
    make_images(folder, args.images, width, height)
    m, p = args.model, args.pretrained
    cpu = decode_rate(folder, tmp / "w-cpu", m, p, POOL_THREADS, args.processes)
    read = decode_rate(folder, tmp / "w-gpu", m, p, POOL_THREADS, args.processes, defer_jpeg=True)
    gpu = gpu_decode_rate(folder, m, p, args.device)
    raw = raw_forward(m, p, args.images, default_batch_size(args.device), args.device)
    name = f"{args.images} JPEGs {width}x{height}, model {m} ({p}), device {args.device}"
    print(f"{name}, cores {os.cpu_count()}")
    print(f"decode, CPU pool of {args.processes:3d}     : {cpu:9.1f} images/s  (baseline)")
    print(f"read stage, GPU decoding      : {read:9.1f} images/s  (x{read / cpu:.2f} of the baseline)")
    print(
        f"decode, BatchDecoder {args.device:6s}   : {gpu:9.1f} images/s  (x{gpu / cpu:.2f} of the baseline)"
    )
    print(f"raw forward                   : {raw:9.1f} images/s", flush=True)
    if not args.device.startswith("cuda"):
        print("whole-job figures: need a CUDA device (--gpu-decode is refused elsewhere)")
        return
    runs = jobs(folder, tmp, args)
    a, b = stored(tmp / "home-True"), stored(tmp / "home-False")
    assert len(a) == len(b) == args.images, (len(a), len(b))
    cosine = min(float(a[k] @ b[k]) for k in b)
    for mode, (whole, steady) in runs.items():
        print(f"vistag index, {mode}    : {whole:9.1f} images/s whole command, {steady:9.1f} steady")
    (g_whole, g_steady), (c_whole, c_steady) = runs["GPU decode"], runs["CPU decode"]
    print(f"ratio GPU / CPU decode job    : {g_whole / c_whole:9.2f} whole, {g_steady / c_steady:.2f} steady")
    print(f"ratio GPU decode job / raw    : {g_steady / raw:9.2f} steady")
    print(f"min cosine GPU vs CPU decode  : {cosine:.6f}  (every image's stored vector)")


if __name__ == "__main__":
    main()
