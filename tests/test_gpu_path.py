"""The GPU-facing parts of the pipeline: decode threads, batch sizes, and (on a GPU) fp16 encoding.

Without a GPU these check the rules and that the multi-threaded in-process run that a GPU gets by
default produces exactly what the single-threaded one does; with one, the CUDA tests also run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.models import ModelIdentity, load_model, parse_model_spec
from pipeline.handler import CPU_BATCH_SIZE, GPU_BATCH_SIZE, default_batch_size, encode_pixels
from pipeline.preprocess import split_transform
from pipeline.runners import gpu_defaults
from vistag import Archive

IDENTITY = ModelIdentity("test", None, 8, {"size": 8})

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_defaults_add_decode_threads_only_for_the_in_process_runner_on_a_gpu(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert gpu_defaults([], "cuda", 100) == [
        "--runner=FnApiRunner",
        "--direct_num_workers=16",
        "--direct_running_mode=multi_threading",
    ]
    assert "--direct_num_workers=3" in gpu_defaults([], "cuda:1", 3)  # never more threads than chunks
    assert gpu_defaults([], "cpu", 100) == ["--runner=FnApiRunner"]
    assert gpu_defaults(["--direct_num_workers=4"], "cuda", 100) == [
        "--direct_num_workers=4",
        "--runner=FnApiRunner",
    ]
    assert gpu_defaults(["--runner=DataflowRunner"], "cuda", 100) == ["--runner=DataflowRunner"]


def test_default_batch_size_depends_on_the_device():
    assert default_batch_size("cpu") == CPU_BATCH_SIZE == 32
    assert default_batch_size("cuda") == default_batch_size("cuda:1") == GPU_BATCH_SIZE == 256


def _embeddings(archive: Archive) -> dict[str, np.ndarray]:
    from indexer import versions
    from query.tagging import corpus_matrix

    version = versions.current_version(archive.home)
    ids, xb = corpus_matrix(archive.home, archive.catalog, version)
    uris = {r["id"]: r["uri"] for r in archive.catalog.images(ids.tolist(), status=None)}
    return {uris[i]: x for i, x in zip(ids.tolist(), xb, strict=True)}


def test_decode_threads_embed_exactly_what_one_thread_does(tmp_path, corpus, tiny_model):
    """The run a GPU gets by default (in-process, several decode threads, one shared model) stores
    the same vectors, images and failures as the single-threaded run."""
    threads = ("--direct_num_workers=2", "--direct_running_mode=multi_threading")
    runs = {}
    for name, extra, pool in [("one", (), 0), ("threads", threads, 0), ("pool", threads, 2)]:
        with Archive(tmp_path / name, device="cpu") as archive:
            result = archive.index(
                [corpus.root],
                model=tiny_model,
                batch_size=8,
                chunk_size=16,
                beam_args=extra,
                decode_processes=pool,
            )
            runs[name] = (
                result.to_dict(),
                _embeddings(archive),
                sorted(f["uri"] for f in archive.failures()),
            )
    one, one_vecs, one_failed = runs["one"]
    assert one["embedded"] == len(one_vecs) > 16 and one_failed  # several chunks ran, bad files failed
    for name in ("threads", "pool"):
        many, many_vecs, many_failed = runs[name]
        assert (many["embedded"], many["failed"], many_failed) == (one["embedded"], one["failed"], one_failed)
        assert many_vecs.keys() == one_vecs.keys()
        for uri, vec in one_vecs.items():
            np.testing.assert_allclose(many_vecs[uri], vec, atol=1e-6)


@cuda
def test_fp16_gpu_encoding_matches_cpu(tiny_model):
    cpu = load_model(parse_model_spec(tiny_model), "cpu")
    gpu = load_model(parse_model_spec(tiny_model), "cuda")
    split = split_transform(cpu.identity)
    pixels = np.random.default_rng(0).integers(0, 256, (37, *split.shape), dtype=np.uint8)
    dim = cpu.identity.embed_dim
    ref = encode_pixels(cpu, pixels, split.normalize, 8, dim)
    got = encode_pixels(gpu, pixels, split.normalize, 16, dim)  # other batch size: same rows
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    assert float(np.min(np.sum(got * ref, axis=1))) > 0.999  # cosine to the fp32 CPU rows


@cuda
def test_index_on_gpu_end_to_end(tmp_path, corpus, tiny_model):
    with Archive(tmp_path / "gpu", device="cuda") as archive:
        result = archive.index([corpus.root], model=tiny_model, chunk_size=16)
        hits = archive.similar(str(corpus.good[0]), k=1)
    assert result.embedded == len(corpus.good) and result.failed == len(corpus.bad)
    assert hits[0].uri.endswith(corpus.good[0].name) and hits[0].score > 0.99


def test_input_dtype_of_a_half_precision_model_is_half():
    """OpenCLIP's fp16 models keep some parameters in float32; the tower's input must be half."""
    import open_clip

    from core.models import input_dtype

    model, _, _ = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None, precision="fp16")
    assert next(model.parameters()).dtype == torch.float32  # why the first parameter cannot tell
    assert input_dtype(model) == torch.float16
    assert input_dtype(open_clip.create_model("ViT-B-32", pretrained=None)) == torch.float32


def test_cli_rejects_bad_decode_processes(cli, tmp_path, corpus, tiny_model):
    out = cli(
        "index", str(corpus.root), "--home", tmp_path, "--model", tiny_model, "--decode-processes", "-1"
    )
    assert out.code == 2 and "--decode-processes must be 0 or more" in out.err


def test_replica_devices_one_copy_per_visible_gpu(monkeypatch):
    from pipeline.handler import replica_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert replica_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2"]
    assert replica_devices("cuda:1") == ["cuda:1"]  # pinned to one GPU
    assert replica_devices("cpu") == ["cpu"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert replica_devices("cuda") == ["cuda"]


def test_replicas_hand_a_chunk_to_a_free_gpu():
    from core.models import LoadedModel
    from pipeline.handler import Replicas, _device_lock

    identity = None
    gpus = [LoadedModel(torch.nn.Linear(1, 1), None, None, identity, f"cuda:{i}") for i in range(3)]
    replicas = Replicas(gpus)
    assert replicas.device == "cuda:0"
    assert {id(replicas.pick()) for _ in range(6)} == {id(m) for m in gpus}  # all free: in turn
    with _device_lock(gpus[0]), _device_lock(gpus[2]):
        assert all(replicas.pick() is gpus[1] for _ in range(5))  # the only free one
        with _device_lock(gpus[1]):
            assert replicas.pick() in gpus  # all busy: one of them, in turn
    with pytest.raises(ValueError):
        Replicas([])


def test_more_worker_threads_for_more_model_copies(monkeypatch):
    from pipeline.job import POOL_THREADS, PipelineConfig, local_gpu_config

    monkeypatch.setattr("os.cpu_count", lambda: 32)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    config = PipelineConfig(worklist="w", total=100, output="o", identity=IDENTITY)
    _, args = local_gpu_config(config, "cuda", 100)
    assert "--direct_num_workers=16" in args  # two chunks in flight per GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _, args = local_gpu_config(config, "cuda", 100)
    assert f"--direct_num_workers={POOL_THREADS}" in args


def test_two_model_copies_share_the_chunks_and_embed_what_one_does(tmp_path, corpus, tiny_model, monkeypatch):
    """A process with two model copies (as on a 2-GPU machine; here two CPU copies) sends chunks
    to both and stores exactly the vectors of a one-copy run."""
    import pipeline.handler as handler
    from core import models

    threads = ("--direct_num_workers=2", "--direct_running_mode=multi_threading")
    with Archive(tmp_path / "one", device="cpu") as archive:
        archive.index([corpus.root], model=tiny_model, batch_size=4, chunk_size=8, beam_args=threads)
        one = _embeddings(archive)
    used: list[int] = []
    real_encode = handler.encode_pixels

    def encode(model, *args):
        used.append(id(model.model))
        return real_encode(model, *args)

    monkeypatch.setattr(handler, "replica_devices", lambda device: [device, device])
    monkeypatch.setattr(
        handler, "load_model", lambda spec, device: models._load(spec, device)
    )  # fresh copies
    monkeypatch.setattr(handler, "encode_pixels", encode)
    with Archive(tmp_path / "two", device="cpu") as archive:
        archive.index([corpus.root], model=tiny_model, batch_size=4, chunk_size=8, beam_args=threads)
        two = _embeddings(archive)
    assert len(set(used)) == 2 and len(used) >= 3  # several chunks, and both copies embedded some
    assert two.keys() == one.keys()
    for uri, vec in one.items():
        np.testing.assert_allclose(two[uri], vec, atol=1e-6)


def test_job_prewarms_the_pool_only_on_the_in_process_runner(monkeypatch):
    import contextlib

    from pipeline import decode_pool, job

    started = []

    @contextlib.contextmanager
    def fake(decoder, processes):
        started.append(processes)
        yield

    monkeypatch.setattr(decode_pool, "prewarmed", fake)
    config = job.PipelineConfig(worklist="w", total=1, output="o", identity=IDENTITY, decode_processes=3)
    for args, want in [([], [3]), (["--runner=DirectRunner"], []), (["--runner=DataflowRunner"], [])]:
        started.clear()
        with job._prewarmed_pool(config, args):
            pass
        assert started == want, args
    started.clear()
    with job._prewarmed_pool(job.replace(config, decode_processes=0), []):
        pass
    assert started == []
