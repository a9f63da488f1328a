"""Pipeline throughput on Beam's Dask runner (1 and 2 worker processes) against the FnApiRunner.

    python bench/bench_dask.py [--images 192] [--image-size 256] [--model ViT-B-32]
                               [--batch-size 16] [--chunk-size 16] [--workers 1,2]

One corpus (JPEG photo-like images), one model (the named OpenCLIP architecture with seeded
random weights, saved as a ``local-dir:`` model so every process loads the same weights), the
same job (:func:`pipeline.job.run_config`: read, hash, decode, preprocess, RunInference, shards)
on each runner. Every runner does one untimed warm-up run first (Dask workers import torch and
load the model once per process; the cluster is started before and not timed), then
``--repeats`` timed runs, of which the fastest counts (the machine may be shared). Dask workers run one thread each (distributed sets ``OMP_NUM_THREADS=1`` in workers); the
FnApiRunner runs in this process with torch's default threads. Embeddings of every runner are
checked against the FnApiRunner's, matched by uri.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_pipeline import make_images


def make_local_model(folder: Path, name: str, seed: int = 0) -> str:
    """Save OpenCLIP ``name`` with seeded random weights as a ``local-dir:`` model; returns its spec."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    preprocess = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in open_clip.get_model_preprocess_cfg(model).items()
    }
    config = {"model_cfg": open_clip.get_model_config(name), "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return f"local-dir:{folder}"


def timed_run(images: Path, out: Path, model: Any, beam_args: list[str], args: argparse.Namespace) -> float:
    """Seconds of one whole job over ``images`` into the shard folder ``out``."""
    from pipeline.inputs import expand_inputs
    from pipeline.job import PipelineConfig, run_config, write_worklist

    start = time.perf_counter()
    entries = expand_inputs([str(images)]).entries
    config = PipelineConfig(
        worklist=write_worklist(str(out), entries),
        total=len(entries),
        output=str(out),
        identity=model,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        beam_args=tuple(beam_args),
        timeout_s=1800,
    )
    run_config(config)
    return time.perf_counter() - start


def vectors(out: Path) -> dict[str, np.ndarray]:
    """uri -> embedding of every image in a shard folder."""
    from pipeline import shards

    found = {}
    for name in shards.list_shards(str(out)):
        shard = shards.read_shard(str(out), name)
        found |= {m["uri"]: np.asarray(shard.embeddings[m["row"]]) for m in shard.meta}
    return found


def measure(
    tmp: Path, label: str, model: dict, beam_args: list[str], args: argparse.Namespace
) -> tuple[float, float]:
    """(cold seconds, best warm images/s of ``args.repeats`` runs) of the job on one runner."""
    cold = timed_run(tmp / "images", tmp / f"{label}-warmup", model, beam_args, args)
    seconds = min(
        timed_run(tmp / "images", tmp / f"{label}-{i}", model, beam_args, args) for i in range(args.repeats)
    )
    (tmp / f"{label}-0").rename(tmp / label)
    got = vectors(tmp / label)
    assert len(got) == args.images, (label, len(got))
    return cold, args.images / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--workers", default="1,2", help="Dask worker process counts to measure")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per runner (the best counts)")
    args = ap.parse_args()
    import torch

    from core.models import load_model, parse_model_spec
    from pipeline.runners import local_cluster

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        make_images(tmp / "images", args.images, args.image_size)
        spec = make_local_model(tmp / "model", args.model)
        model = load_model(parse_model_spec(spec), "cpu").identity
        rates = {"FnApiRunner": measure(tmp, "fnapi", model, ["--runner=FnApiRunner"], args)}
        reference = vectors(tmp / "fnapi")
        for n in (int(w) for w in args.workers.split(",")):
            with local_cluster(workers=n) as cluster:
                dask_args = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
                rates[f"Dask, {n} worker(s)"] = measure(tmp, f"dask{n}", model, dask_args, args)
            got = vectors(tmp / f"dask{n}")
            diff = max(float(np.abs(got[u] - v).max()) for u, v in reference.items())
            assert diff < 1e-4, f"Dask {n} embeddings differ from FnApiRunner's by {diff}"
    report(rates, args, torch.get_num_threads())


def report(rates: dict[str, tuple[float, float]], args: argparse.Namespace, threads: int) -> None:
    print(
        f"model {args.model} (seeded random weights), {args.images} JPEG images {args.image_size}px, "
        f"batch {args.batch_size}, chunk {args.chunk_size}; FnApiRunner torch threads {threads}, "
        f"Dask workers 1 thread each"
    )
    base = rates["FnApiRunner"][1]
    for label, (cold, rate) in rates.items():
        print(
            f"{label:22s}: {rate:7.1f} images/s  ({rate / base:5.2f} x FnApiRunner; first run {cold:.1f} s)"
        )
    dask = [v[1] for k, v in rates.items() if k.startswith("Dask")]
    if len(dask) == 2:
        print(f"Dask scaling, 2nd count / 1st count: {dask[1] / dask[0]:.2f}")


if __name__ == "__main__":
    main()
