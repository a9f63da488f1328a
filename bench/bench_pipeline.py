"""Pipeline throughput: ``vistag index`` images/s against a raw OpenCLIP forward loop, same run.

    python bench/bench_pipeline.py [--images 400] [--model ViT-B-32] [--pretrained random]
                                   [--batch-size N] [--image-size 320] [--device cpu|cuda]
                                   [--decode-threads 1,2]

Three figures, all from this run, on the same images, model, batch size and device:

- raw forward: ``encode_image`` on one preprocessed batch already in the model's memory (on a
  GPU: resident on the device, in half precision), repeated: the model's ceiling;
- decode: the pipeline's own read + SHA-256 + JPEG decode + resize stage (``ReadDecodeFn``) over
  the work list's chunks with 1, 2, ... threads: what the CPU can feed;
- the whole job: ``vistag index`` (listing, hashing, decoding, preprocessing, RunInference,
  shard writing, catalog update, index build and publish).

The ratio to watch is job / min(raw forward, decode at the job's thread count): 1.0 means the
job adds nothing to its slowest stage. The job also runs on the first half of the images, in a
home of its own; (N - N/2) / (t(N) - t(N/2)) is its steady-state rate, with start-up (model
load, decode pool, runner) and per-run fixed costs cancelled out. On CPU the model is the slowest stage (target >= 0.9); on a
GPU the decode threads usually are, and the decode scaling shows how many cores it takes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core.models import ModelIdentity


def _write_images(args: tuple[str, int, int, int]) -> None:
    from PIL import Image

    folder, start, stop, size = args
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        base = np.stack(
            [np.sin(xx * rng.uniform(1, 9) + yy * rng.uniform(0, 5) + c) for c in rng.uniform(0, 6, 3)], -1
        )
        arr = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 20, (size, size, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(Path(folder) / f"img-{i:06d}.jpg", quality=90)


def make_images(folder: Path, n: int, size: int) -> None:
    """Write ``n`` photo-like JPEGs (smooth gradients plus noise) of size x size, on every core."""
    folder.mkdir(parents=True, exist_ok=True)
    step = max(1, n // (4 * (os.cpu_count() or 1)))
    jobs = [(str(folder), s, min(n, s + step), size) for s in range(0, n, step)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_images, jobs))


def raw_forward(model_spec: str, pretrained: str, n: int, batch_size: int, device: str) -> float:
    """Images/s of encode_image on one preprocessed batch kept in the model's memory (the ceiling)."""
    import torch

    from core.encode import forward as _forward
    from core.models import load_model, parse_model_spec

    loaded = load_model(parse_model_spec(model_spec, pretrained), device)
    size = loaded.identity.preprocess["size"]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.randn(batch_size, 3, *hw, device=loaded.device)
    x = x.half() if loaded.half else x

    def sync() -> None:
        if loaded.device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up (cuDNN/cuBLAS heuristics, allocator)
        _forward(loaded, x)
    sync()
    done, start = 0, time.perf_counter()
    while done < n:
        _forward(loaded, x)
        done += batch_size
    sync()
    return done / (time.perf_counter() - start)


def decode_rate(
    folder: Path, work: Path, model_spec: str, pretrained: str, threads: int, processes: int = 0
) -> float:
    """Images/s of the pipeline's read + hash + decode + preprocess stage: ``threads`` worker
    threads, each decoding itself or (``processes`` > 0) through one shared decode pool."""
    from core.models import load_model, parse_model_spec
    from pipeline.inputs import expand_inputs
    from pipeline.stages import ReadDecodeFn
    from pipeline.worklist import DEFAULT_CHUNK_SIZE, cut_chunks, write_worklist

    identity = load_model(parse_model_spec(model_spec, pretrained), "cpu").identity
    entries = expand_inputs([str(folder)]).entries
    worklist = write_worklist(str(work), entries)
    chunks = cut_chunks(worklist, DEFAULT_CHUNK_SIZE).chunks
    fns = []
    for _ in range(threads):
        fn = ReadDecodeFn(worklist, identity, decode_processes=processes)
        fn.setup()
        fns.append(fn)
    if processes:  # start the pool's processes before the clock
        list(fns[0].process(chunks[0]))

    def one(i: int) -> int:
        fn = fns[i % threads]
        return sum(len(meta.rows) for out in fn.process(chunks[i]) for meta, _ in out)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(one, range(len(chunks))))
    rate = done / (time.perf_counter() - start)
    for fn in fns:
        fn.teardown()
    return rate


def pipeline_run(folder: Path, home: Path, args: argparse.Namespace) -> tuple[float, dict]:
    from vistag import Archive

    start = time.perf_counter()
    with Archive(home, device=args.device) as archive:
        result = archive.index(
            [folder], model=args.model, pretrained=args.pretrained, batch_size=args.batch_size
        )
    return time.perf_counter() - start, result.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the job's (256 on GPU, 32 on CPU)")
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--decode-threads",
        default="1",
        help="comma-separated thread counts for the in-thread decode figures (default 1)",
    )
    ap.add_argument(
        "--decode-processes",
        default=None,
        help="comma-separated decode pool sizes for the pool figures (default: the job's, "
        "one per core on a GPU, none on CPU)",
    )
    args = ap.parse_args()
    import torch

    from pipeline.handler import default_batch_size
    from pipeline.job import POOL_THREADS, PipelineConfig, local_gpu_config

    batch = args.batch_size or default_batch_size(args.device)
    job = local_gpu_config(PipelineConfig("", 0, "", ModelIdentity("none", None, 1, {})), args.device, 10**9)[
        0
    ]
    job_pool = job.decode_processes or 0
    threads = sorted({int(t) for t in args.decode_threads.split(",") if t})
    pools = sorted({int(p) for p in (args.decode_processes or str(job_pool)).split(",") if int(p) > 0})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        start = time.perf_counter()
        make_images(folder, args.images, args.image_size)
        made = time.perf_counter() - start
        raw = raw_forward(args.model, args.pretrained, args.images, batch, args.device)
        decode = {
            f"{t} thread(s)": decode_rate(folder, Path(tmp) / f"w{t}", args.model, args.pretrained, t)
            for t in threads
        }
        for n in pools:
            decode[f"pool of {n} processes"] = decode_rate(
                folder, Path(tmp) / f"p{n}", args.model, args.pretrained, POOL_THREADS, n
            )
        half = Path(tmp) / "half"  # the first half of the images (hard links): the steady-state rate
        half.mkdir()
        for f in sorted(folder.iterdir())[: args.images // 2]:
            os.link(f, half / f.name)
        half_seconds, _ = pipeline_run(half, Path(tmp) / "home-half", args)
        seconds, result = pipeline_run(folder, Path(tmp) / "home", args)
        assert result["embedded"] == args.images, result
        again, _ = pipeline_run(folder, Path(tmp) / "home", args)
    rate = args.images / seconds
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"model {args.model} ({args.pretrained}), {args.images} JPEG images {args.image_size}px "
        f"(written in {made:.1f} s), batch {batch}, device {args.device} ({name}), "
        f"torch threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}"
    )
    print(f"raw encode_image forward : {raw:8.1f} images/s")
    for what, r in decode.items():
        print(f"decode stage, {what:24s}: {r:8.1f} images/s")
    job_decode = f"pool of {job_pool} processes" if job_pool else "1 thread(s)"
    print(f"vistag index (whole job) : {rate:8.1f} images/s  ({seconds:.1f} s, decoding: {job_decode})")
    print(f"ratio job / raw forward  : {rate / raw:8.2f}")
    ceiling = min(raw, decode.get(job_decode, raw))
    print(f"ratio job / slowest stage: {rate / ceiling:8.2f}  (min of raw forward and decode, {job_decode})")
    added = args.images - args.images // 2
    steady = added / (seconds - half_seconds) if seconds > half_seconds else float("inf")
    print(
        f"steady state (marginal)  : {steady:8.1f} images/s  ((N - N/2) / (t(N) - t(N/2)); "
        f"t(N/2) = {half_seconds:.1f} s: start-up and fixed costs cancel)"
    )
    print(f"ratio steady / raw       : {steady / raw:8.2f}")
    print(f"ratio steady / slowest   : {steady / ceiling:8.2f}")
    print(f"no-change re-run         : {again:8.1f} s ({again / seconds:.2f} of the full run)")


if __name__ == "__main__":
    main()
