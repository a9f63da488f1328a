"""The Beam job: work list -> chunks -> read, hash, decode, preprocess -> RunInference -> shards.

Entry points: :func:`run` (argv, as on the command line; tests pass ``test_pipeline``) and
:func:`run_config` (a frozen :class:`PipelineConfig`). The job knows nothing of SQL or FAISS:
its whole output is a folder of shards (see :mod:`pipeline.shards`), failures included.

The work list is cut into chunks of ``chunk_size`` files by line number (the driver ships only
byte ranges; workers read their own lines). Three stages, each one element in, one out, all work
in ``process``: ``ReadDecode`` turns a chunk into its metadata and a (N, 3, H, W) uint8 pixel
batch; ``Embed`` is Beam ``RunInference`` with a handler that takes each chunk as one batch (no
``BatchElements``: nothing is held at the end of a bundle, which Beam's Dask runner would drop);
``WriteShard`` writes the chunk's shard under a name fixed by the run and the chunk, so a chunk
that an engine retries rewrites its shard instead of adding a second one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from core.decode import DEFAULT_MAX_PIXELS
from core.errors import InputError
from core.models import ModelIdentity, pick_device
from pipeline import shards
from pipeline.entries import EntryDecoder, ImageKey
from pipeline.gpu_decode import geometry
from pipeline.handler import OpenClipImageHandler, replica_devices
from pipeline.inputs import expand_inputs
from pipeline.progress import shard_progress
from pipeline.runners import (
    DASK_RUNNER,
    DEFAULT_RUNNER,
    close_result,
    dask_cluster,
    feeds_local_gpu,
    gpu_defaults,
    is_in_process,
    local_cluster,
    pipeline_options,
)
from pipeline.stages import ChunkMeta, ReadDecodeFn, WriteShardFn
from pipeline.worklist import (
    DEFAULT_CHUNK_SIZE,
    WORKLIST_FILE,
    Chunking,
    cut_chunks,
    parse_worklist_line,
    write_worklist,
)

__all__ = [
    "DASK_RUNNER",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_RUNNER",
    "KNOWN_HASHES_FILE",
    "WORKLIST_FILE",
    "ChunkMeta",
    "ImageKey",
    "PipelineConfig",
    "build",
    "dask_cluster",
    "embed",
    "local_cluster",
    "parse_worklist_line",
    "pipeline_options",
    "chunking",
    "run",
    "run_config",
    "write_worklist",
]

log = logging.getLogger(__name__)
KNOWN_HASHES_FILE = "known-sha256.txt"
POOL_THREADS = 4  # chunks in flight when a decode pool feeds a GPU: one embedding, the rest decoding
GPU_DECODE_DEVICES = ("cuda",)  # devices whose handler decodes JPEGs (tests add "cpu" to run the path)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the job needs, built once and passed whole.

    ``worklist`` is a JSON-lines file of files to embed (see :func:`write_worklist`), read by
    the workers themselves so that a million-file run does not ship its list inside the job
    graph. A shard holds one chunk: at most ``min(chunk_size, shard_size)`` files. ``reshuffle``
    puts a ``beam.Reshuffle`` between decoding and inference, so a runner that honours it
    (Dataflow, Flink) scales CPU decoding apart from (GPU) inference. ``timeout_s`` bounds the
    wait for a runner that runs apart from this process (Dask): the job is cancelled after it.
    ``gpu_decode``: JPEGs decoded by nvJPEG on the model's GPU (see :mod:`pipeline.gpu_decode`);
    None: when the in-process runner feeds a local CUDA GPU; True off CUDA: :class:`InputError`.
    """

    worklist: str
    total: int
    output: str
    identity: ModelIdentity
    batch_size: int | None = None
    shard_size: int = 4096
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str | None = None
    known_hashes_file: str | None = None
    progress: bool = False
    beam_args: tuple[str, ...] = field(default_factory=tuple)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    reshuffle: bool = False
    timeout_s: float | None = None
    decode_processes: int | None = None  # None: one per CPU core when the in-process runner feeds a GPU
    engine: str = "torch"  # what runs the image tower: auto, torch or openvino (see core.engines)
    engine_cache: str | None = None  # where OpenVINO exports are kept (None: never export)
    gpu_decode: bool | None = None

    @property
    def files_per_chunk(self) -> int:
        return max(1, min(self.chunk_size, self.shard_size))


def chunking(config: PipelineConfig) -> Chunking:
    """The chunks of ``config``'s work list; their shard names are fixed by work list, chunk size and model."""
    return cut_chunks(config.worklist, config.files_per_chunk, salt=config.identity.key)


def embed(batches: beam.PCollection, handler: ModelHandler) -> beam.PCollection:
    """The inference stage: ``[(key, pixels)]`` one-record batches -> ``(key, PredictionResult)``.

    The elements are batches already, so RunInference adds no ``BatchElements`` (which would
    hold records until ``finish_bundle``).
    """
    return batches | "Embed" >> RunInference(KeyedModelHandler(handler).with_no_batching())


def build(
    p: beam.Pipeline,
    config: PipelineConfig,
    *,
    chunks: Chunking | None = None,
    handler: ModelHandler | None = None,
) -> Chunking:
    """Add the job's transforms to ``p``; returns the chunk plan. ``handler`` replaces the OpenCLIP one."""
    chunks = chunks or chunking(config)
    handler = handler or OpenClipImageHandler(
        config.identity,
        batch_size=config.batch_size,
        device=config.device,
        engine=config.engine,
        engine_cache=config.engine_cache,
        max_pixels=config.max_pixels,
    )
    read = ReadDecodeFn(
        config.worklist,
        config.identity,
        config.known_hashes_file,
        config.max_pixels,
        config.decode_processes or 0,
        bool(config.gpu_decode),
    )
    decoded = p | "Chunks" >> beam.Create(chunks.chunks) | "ReadDecode" >> beam.ParDo(read)
    if config.reshuffle:
        decoded = decoded | "Reshuffle" >> beam.Reshuffle()
    _ = embed(decoded, handler) | "WriteShard" >> beam.ParDo(
        WriteShardFn(config.output, config.identity, chunks.tag)
    )
    return chunks


def local_gpu_config(config: PipelineConfig, device: str, chunks: int) -> tuple[PipelineConfig, list[str]]:
    """``config`` with its decode processes settled, and its Beam args.

    When the in-process runner feeds a GPU (and ``--direct_num_workers`` is not given), chunks are
    decoded by a pool of one process per CPU core (see :mod:`pipeline.decode_pool`) and
    ``POOL_THREADS`` worker threads keep chunks in flight, so the GPU embeds one chunk while the
    pool decodes the next ones (see :func:`pipeline.runners.gpu_defaults`). Everywhere else
    entries are decoded in the worker's own thread unless ``decode_processes`` asks for a pool.
    """
    processes = config.decode_processes
    if processes is None:
        processes = (os.cpu_count() or 1) if feeds_local_gpu(config.beam_args, device) else 0
    threads = (
        max(POOL_THREADS, 2 * len(replica_devices(device))) if processes else None
    )  # 2 per model copy at least
    return replace(config, decode_processes=processes), gpu_defaults(
        config.beam_args, device, chunks, threads
    )


def check_gpu_decode(gpu_decode: bool | None, device: str) -> None:
    """Raise :class:`InputError` when GPU decoding is asked for on a device that cannot do it."""
    if gpu_decode and not str(device).startswith(GPU_DECODE_DEVICES):
        raise InputError(f"--gpu-decode needs a CUDA device; this run's device is {device}")


def settle_gpu_decode(config: PipelineConfig, device: str) -> PipelineConfig:
    """``config`` with ``gpu_decode`` decided for ``device`` (see :class:`PipelineConfig`); off for a
    model whose resize the device cannot reproduce (see :func:`pipeline.gpu_decode.geometry`)."""
    check_gpu_decode(config.gpu_decode, device)
    wanted = config.gpu_decode
    if wanted is None:
        wanted = feeds_local_gpu(config.beam_args, device)
    if wanted and geometry(config.identity) is None:
        log.warning("decoding on the CPU: the GPU cannot reproduce %s's resize", config.identity.model)
        wanted = False
    return replace(config, gpu_decode=wanted)


def _finish(result: Any, timeout_s: float | None) -> None:
    """Wait for the run (at most ``timeout_s``), cancel it if the wait fails, close its client."""
    try:
        result.wait_until_finish(duration=int(timeout_s * 1000) if timeout_s else None)
    except BaseException:
        with contextlib.suppress(Exception):
            result.cancel()
        raise
    finally:
        close_result(result)


def run_config(
    config: PipelineConfig, test_pipeline: beam.Pipeline | None = None, *, handler: ModelHandler | None = None
) -> list[str]:
    """Run the job; returns the names of the shards now in ``config.output``.

    On Beam's Dask runner without ``--dask_client_address``, a local Dask cluster is started
    for the run (see :func:`pipeline.runners.dask_cluster`).
    """
    device = pick_device(config.device)
    config = settle_gpu_decode(config, device)
    chunks = chunking(config)
    if not chunks.chunks:
        return shards.list_shards(config.output)
    with shard_progress(config.output, f"shard-{chunks.tag}-", config.total or chunks.total, config.progress):
        if test_pipeline is not None:
            _run_pipeline(test_pipeline, config, chunks, handler)
        else:
            config, beam_args = local_gpu_config(config, device, len(chunks.chunks))
            with dask_cluster(beam_args) as args, _prewarmed_pool(config, args):
                _run_pipeline(beam.Pipeline(options=pipeline_options(args)), config, chunks, handler)
    return shards.list_shards(config.output)


def _run_pipeline(
    p: beam.Pipeline, config: PipelineConfig, chunks: Chunking, handler: ModelHandler | None
) -> None:
    """Build and run ``p``. Beam makes a temporary folder when a pipeline is constructed and removes
    it only at the end of ``run()``, so a build that fails would leave it behind: removed here."""
    try:
        build(p, config, chunks=chunks, handler=handler)
        _finish(p.run(), config.timeout_s)
    finally:
        shutil.rmtree(getattr(p, "local_tempdir", ""), ignore_errors=True)


@contextlib.contextmanager
def _prewarmed_pool(config: PipelineConfig, beam_args: Sequence[str]) -> Iterator[None]:
    """On the in-process runner, the run's decode pool started before the pipeline (see
    :func:`pipeline.decode_pool.prewarmed`); elsewhere the workers start their own."""
    if not config.decode_processes or not is_in_process(beam_args):
        yield
        return
    from pipeline.decode_pool import prewarmed

    decoder = EntryDecoder(
        config.identity, config.known_hashes_file, config.max_pixels, bool(config.gpu_decode)
    )
    with prewarmed(decoder, config.decode_processes):
        yield


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    ap.add_argument("--inputs", nargs="+", required=True, help="folders, globs, manifests or image files")
    ap.add_argument("--output", required=True, help="shard folder (local or any Beam filesystem)")
    ap.add_argument("--model", default=None, help="OpenCLIP model spec")
    ap.add_argument("--pretrained", default=None, help="pretrained tag, checkpoint path or 'random'")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="images per forward (default 256 on GPU, 32 on CPU)"
    )
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="files per unit of work (and shard)"
    )
    ap.add_argument(
        "--decode-processes",
        type=int,
        default=None,
        help="decode pool size (default: one per core when the in-process runner feeds a GPU, else none)",
    )
    ap.add_argument("--reshuffle", action="store_true", help="reshuffle between decoding and inference")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--gpu-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode JPEGs on the model's CUDA GPU (default: when the in-process runner feeds one)",
    )
    return ap


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> list[str]:
    """Command-line entry point; unknown arguments are Beam pipeline options (``--runner`` ...)."""
    from core.models import load_model, parse_model_spec

    args, beam_args = _parser().parse_known_args(argv)
    identity = load_model(parse_model_spec(args.model, args.pretrained), "cpu").identity
    entries = expand_inputs(args.inputs).entries
    config = PipelineConfig(
        worklist=write_worklist(args.output, entries),
        total=len(entries),
        output=args.output,
        identity=identity,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        chunk_size=args.chunk_size,
        reshuffle=args.reshuffle,
        decode_processes=args.decode_processes,
        device=args.device,
        gpu_decode=args.gpu_decode,
        beam_args=tuple(beam_args),
    )
    return run_config(config, test_pipeline)
