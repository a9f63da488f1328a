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
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core.models import ModelIdentity


def _write_images(args: tuple[str, int, int, int, int, int]) -> None:
    from PIL import Image

    folder, start, stop, width, height, seed = args
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    for i in range(start, stop):
        rng = np.random.default_rng((seed, i))
        base = np.stack(
            [np.sin(xx * rng.uniform(1, 9) + yy * rng.uniform(0, 5) + c) for c in rng.uniform(0, 6, 3)], -1
        )
        arr = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 20, (height, width, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(Path(folder) / f"img-{i:06d}.jpg", quality=90)


def make_images(folder: Path, n: int, size: int, height: int | None = None, seed: int = 0) -> None:
    """Write ``n`` photo-like JPEGs (smooth gradients plus noise) of size x size, or size x
    ``height``, on every core; another ``seed`` draws other pictures."""
    folder.mkdir(parents=True, exist_ok=True)
    step = max(1, n // (4 * (os.cpu_count() or 1)))
    jobs = [(str(folder), s, min(n, s + step), size, height or size, seed) for s in range(0, n, step)]
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
    folder: Path,
    work: Path,
    model_spec: str,
    pretrained: str,
    threads: int,
    processes: int = 0,
    defer_jpeg: bool = False,
) -> float:
    """Images/s of the pipeline's read + hash + decode + preprocess stage: ``threads`` worker
    threads, each decoding itself or (``processes`` > 0) through one shared decode pool; with
    ``defer_jpeg``, JPEGs left for the GPU (see :mod:`pipeline.gpu_decode`)."""
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
        fn = ReadDecodeFn(worklist, identity, decode_processes=processes, defer_jpeg=defer_jpeg)
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


def engine_forward(model_spec: str, pretrained: str, n: int, batch_size: int, cache: Path) -> dict[str, dict]:
    """Per engine other than torch that validates on this machine: images/s of its image tower on
    one batch (as :func:`raw_forward`), its minimum cosine to torch fp32 on the probe batch and on
    this batch, and its precision."""
    import torch

    from core import engines
    from core.models import load_model, parse_model_spec

    loaded = load_model(parse_model_spec(model_spec, pretrained), "cpu")
    tower = engines.tower(loaded, "image", "openvino", cache)
    if tower is None:
        return {}
    size = loaded.identity.preprocess["size"]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.randn(batch_size, 3, *hw).numpy()
    with torch.inference_mode():
        want = torch.nn.functional.normalize(loaded.model.encode_image(torch.from_numpy(x)), dim=-1).numpy()
    cosine = float(np.min(np.sum(tower(x) * want, axis=1)))
    for _ in range(2):
        tower(x)
    done, start = 0, time.perf_counter()
    while done < n:
        tower(x)
        done += batch_size
    rate = done / (time.perf_counter() - start)
    info = tower.info
    return {f"openvino {info.precision}": {"rate": rate, "probe": info.min_cosine, "batch": cosine}}


def pipeline_run(folder: Path, home: Path, args: argparse.Namespace, engine: str | None = None) -> float:
    """Seconds of the whole ``vistag index`` command (a fresh Python process, imports included)."""
    return index_command(folder, home, args, engine)[0]


def index_command(
    folder: Path, home: Path, args: argparse.Namespace, engine: str | None = None
) -> tuple[float, dict]:
    """Seconds and ``--json`` result of one whole ``vistag index`` command (a fresh process)."""
    command = [sys.executable, "-m", "vistag.cli", "index", str(folder), "--home", str(home), "--json"]
    command += ["--model", args.model, "--device", args.device]
    command += ["--pretrained", args.pretrained] if args.pretrained else []
    command += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    command += ["--engine", engine] if engine else []
    start = time.perf_counter()
    run = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - start, json.loads(run.stdout)


def stored(home: Path) -> dict[str, np.ndarray]:
    """The home's vectors by file name."""
    from pipeline import shards

    out = {}
    for folder in sorted((home / "shards").glob("*/run-*")):
        for name in shards.list_shards(str(folder)):
            shard = shards.read_shard(str(folder), name)
            out |= {Path(m["uri"]).name: shard.embeddings[m["row"]] for m in shard.meta if m["row"] >= 0}
    return out


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
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VISTAG_ENGINE_CACHE"] = str(Path(tmp) / "engines")  # shared by every run below
        if args.pretrained == "random":  # one set of random weights for every run (a fresh draw each load)
            args.model, args.pretrained = fixed_random(args.model, Path(tmp) / "model"), None
        measure(args, Path(tmp))


def fixed_random(name: str, folder: Path) -> str:
    """A ``local-dir:`` copy of OpenCLIP model ``name`` with random weights drawn once (seeded)."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    folder.mkdir(parents=True)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    config = {
        "model_cfg": open_clip.get_model_config(name),
        "preprocess_cfg": open_clip.get_model_preprocess_cfg(model),
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{folder}"


def measure(args: argparse.Namespace, tmp: Path) -> None:
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
    folder = tmp / "images"
    start = time.perf_counter()
    make_images(folder, args.images, args.image_size)
    made = time.perf_counter() - start
    raw = raw_forward(args.model, args.pretrained, args.images, batch, args.device)
    on_cpu = not args.device.startswith("cuda")
    others = (
        engine_forward(args.model, args.pretrained, args.images, batch, tmp / "engines") if on_cpu else {}
    )
    decode = {
        f"{t} thread(s)": decode_rate(folder, tmp / f"w{t}", args.model, args.pretrained, t) for t in threads
    }
    for n in pools:
        decode[f"pool of {n} processes"] = decode_rate(
            folder, tmp / f"p{n}", args.model, args.pretrained, POOL_THREADS, n
        )
    half = tmp / "half"  # the first half of the images (hard links): the steady-state rate
    half.mkdir()
    for f in sorted(folder.iterdir())[: args.images // 2]:
        os.link(f, half / f.name)
    half_seconds = pipeline_run(half, tmp / "home-half", args)  # also makes the engine's one-time export
    seconds = pipeline_run(folder, tmp / "home", args)
    torch_seconds = pipeline_run(folder, tmp / "home-torch", args, "torch")
    again = pipeline_run(folder, tmp / "home", args)
    auto, reference = stored(tmp / "home"), stored(tmp / "home-torch")
    assert len(auto) == len(reference) == args.images, (len(auto), len(reference))
    agreement = min(float(auto[k] @ reference[k]) for k in reference)
    name = torch.cuda.get_device_name() if not on_cpu else "cpu"
    print(
        f"model {args.model} ({args.pretrained}), {args.images} JPEG images {args.image_size}px "
        f"(written in {made:.1f} s), batch {batch}, device {args.device} ({name}), "
        f"torch threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}"
    )
    print(f"raw forward, torch {'fp32' if on_cpu else 'fp16'}  : {raw:8.1f} images/s")
    for what, figures in others.items():
        print(
            f"raw forward, {what:13s}: {figures['rate']:8.1f} images/s  (x{figures['rate'] / raw:.2f}; "
            f"min cosine to torch fp32 {figures['probe']:.6f} on the probe batch, "
            f"{figures['batch']:.6f} on this batch)"
        )
    for what, r in decode.items():
        print(f"decode stage, {what:24s}: {r:8.1f} images/s")
    job_decode = f"pool of {job_pool} processes" if job_pool else "1 thread(s)"
    rate, torch_rate = args.images / seconds, args.images / torch_seconds
    print(f"vistag index --engine torch: {torch_rate:8.1f} images/s  ({torch_seconds:.1f} s, whole command)")
    print(
        f"vistag index (engine auto) : {rate:8.1f} images/s  ({seconds:.1f} s, whole command, export cached)"
    )
    print(f"ratio auto job / raw torch : {rate / raw:8.2f}")
    print(f"ratio auto job / torch job : {rate / torch_rate:8.2f}")
    print(f"min cosine auto vs torch   : {agreement:.6f}  (every image's stored vector)")
    fastest = max([raw, *(f["rate"] for f in others.values())])
    ceiling = min(fastest, decode.get(job_decode, fastest))
    print(
        f"ratio job / slowest stage  : {rate / ceiling:8.2f}  (min of fastest forward and decode, {job_decode})"
    )
    added = args.images - args.images // 2
    steady = added / (seconds - half_seconds) if seconds > half_seconds else float("inf")
    print(
        f"steady state (marginal)    : {steady:8.1f} images/s  ((N - N/2) / (t(N) - t(N/2)); "
        f"t(N/2) = {half_seconds:.1f} s: start-up and fixed costs cancel)"
    )
    print(f"ratio steady / raw torch   : {steady / raw:8.2f}")
    print(f"ratio steady / slowest     : {steady / ceiling:8.2f}")
    print(f"no-change re-run           : {again:8.1f} s ({again / seconds:.2f} of the full run)")


if __name__ == "__main__":
    main()
