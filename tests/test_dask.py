"""The pipeline on Beam's Dask runner over a real Dask cluster (2 worker processes on loopback).

Checked against the in-process FnApiRunner on the same corpus: the same shards, every image
exactly once, the same failures and embeddings, the model loaded once per worker process; and a
worker killed right after writing a shard costs nothing: Dask reruns its chunk elsewhere, the
chunk rewrites the same shard, nothing is lost or duplicated.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from distributed import Client, WorkerPlugin  # noqa: E402

from core.models import ModelIdentity
from pipeline import shards  # noqa: E402
from pipeline.handler import OpenClipImageHandler  # noqa: E402
from pipeline.inputs import expand_inputs  # noqa: E402
from pipeline.job import PipelineConfig, chunking, run_config, write_worklist  # noqa: E402
from pipeline.runners import DASK_RUNNER, dask_cluster, normalize_args  # noqa: E402
from pipeline.worklist import shard_name  # noqa: E402
from vistag.synth import Corpus, write_corpus  # noqa: E402

CHUNK = 4
TIMEOUT_S = 180


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingHandler(OpenClipImageHandler):
    """The real handler, leaving one file per model load in ``folder`` (named by process id)."""

    def __init__(self, folder: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._folder = folder

    def load_model(self):
        Path(self._folder, f"load-{os.getpid()}-{time.monotonic_ns()}").touch()
        return super().load_model()


class KillOneWorker(WorkerPlugin):
    """Kills the first worker process to claim ``marker``, once (its restarted process runs normally).

    ``when="task"``: it dies as it starts its first pipeline task (Dask must rerun the chunk, or
    the chunk's shard is missing). ``when="shard"``: it dies right after writing its first shard,
    before Dask hears that the chunk is done (the rerun must replace that shard, not add one).
    """

    name = "vistag-kill-one-worker"

    def __init__(self, marker: str, when: str):
        self.marker = marker
        self.when = when
        self.armed = False

    def setup(self, worker) -> None:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        self.armed = True
        if self.when == "shard":
            os.environ["VISTAG_CRASH_AT"] = "shard-written:1"  # see core.faults

    def transition(self, key, start: str, finish: str, **kwargs) -> None:
        if self.armed and self.when == "task" and finish == "executing" and "apply_dofn" in str(key):
            os._exit(137)


@pytest.fixture(scope="module")
def model(tiny_model: str) -> ModelIdentity:
    from core.models import load_model, parse_model_spec

    return load_model(parse_model_spec(tiny_model), "cpu").identity


@pytest.fixture(scope="module")
def dask_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("dask") / "corpus", n=24)


def _config(
    corpus: Corpus, out: Path, model: ModelIdentity, beam_args: list[str], reshuffle: bool = False
) -> PipelineConfig:
    entries = expand_inputs([str(corpus.root)]).entries
    return PipelineConfig(
        worklist=write_worklist(str(out), entries),
        total=len(entries),
        output=str(out),
        identity=model,
        batch_size=3,
        shard_size=100,
        chunk_size=CHUNK,
        beam_args=tuple(beam_args),
        timeout_s=TIMEOUT_S,
        reshuffle=reshuffle,
    )


def _read_all(out: Path) -> tuple[list[str], dict[str, np.ndarray], list[str], list[tuple[str, str, str]]]:
    """(shard names, uri -> vector, every uri in the order met, sorted failures) of a shard folder."""
    names = shards.list_shards(str(out))
    vectors: dict[str, np.ndarray] = {}
    uris: list[str] = []
    failures: list[tuple[str, str, str]] = []
    for name in names:
        shard = shards.read_shard(str(out), name)
        for meta in shard.meta:
            uris.append(meta["uri"])
            vectors[meta["uri"]] = np.asarray(shard.embeddings[meta["row"]])
        failures += [(f["uri"], f["stage"], f["reason"]) for f in shard.failures]
    return names, vectors, uris, sorted(failures)


def _dask_args(cluster) -> list[str]:
    return ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]


def _expected_names(config: PipelineConfig) -> list[str]:
    chunks = chunking(config)
    return [shard_name(chunks.tag, c.index) for c in chunks.chunks]


def test_dask_run_equals_fnapi_run(cluster, dask_corpus, model, tiny_model, tmp_path):
    """Same shards as the FnApiRunner (which runs with ``reshuffle``: an option that changes nothing
    in the output), each image once, same failures and vectors; one model load per worker process."""
    ref = _config(dask_corpus, tmp_path / "fnapi", model, ["--runner=FnApiRunner"], reshuffle=True)
    run_config(ref)
    config = _config(dask_corpus, tmp_path / "dask", model, _dask_args(cluster))
    loads = tmp_path / "loads"
    loads.mkdir()
    handler = CountingHandler(str(loads), model, batch_size=3)
    names = run_config(config, handler=handler)

    ref_names, ref_vectors, ref_uris, ref_failures = _read_all(tmp_path / "fnapi")
    got_names, vectors, uris, failures = _read_all(tmp_path / "dask")
    n_files = len(dask_corpus.good) + len(dask_corpus.bad)
    assert names == got_names == ref_names == _expected_names(config)  # one shard per chunk, same names
    assert len(names) == -(-n_files // CHUNK) > 2
    assert sorted(uris) == sorted(ref_uris) == sorted(str(p) for p in dask_corpus.good)  # each exactly once
    assert failures == ref_failures and [f[0] for f in failures] == sorted(str(p) for p in dask_corpus.bad)
    for uri, vec in ref_vectors.items():
        np.testing.assert_allclose(vectors[uri], vec, atol=1e-5)
    pids = [p.name.split("-")[1] for p in loads.iterdir()]
    assert 1 <= len(pids) <= 2 and len(set(pids)) == len(pids)  # once per worker process, at most


@pytest.mark.parametrize("when", ["task", "shard"])
def test_worker_killed_mid_run_loses_and_duplicates_nothing(when, cluster, dask_corpus, model, tmp_path):
    marker = tmp_path / "armed"
    plugin = KillOneWorker(str(marker), when)
    with Client(cluster.scheduler_address, timeout=60) as client:
        client.register_plugin(plugin)
        try:
            config = _config(dask_corpus, tmp_path / "dask", model, _dask_args(cluster))
            names = run_config(config)
        finally:
            client.unregister_worker_plugin(plugin.name)
    with pytest.raises(ProcessLookupError):  # the armed worker really died
        os.kill(int(marker.read_text()), 0)
    got_names, _, uris, failures = _read_all(tmp_path / "dask")
    assert names == got_names == _expected_names(config)  # one shard per chunk, none twice
    assert Counter(uris) == Counter(str(p) for p in dask_corpus.good)  # every image exactly once
    assert sorted(f[0] for f in failures) == sorted(str(p) for p in dask_corpus.bad)


def test_runner_names_and_partitioning():
    args = normalize_args(["--runner", "DaskRunner", "--dask_client_address=tcp://127.0.0.1:1"])
    assert f"--runner={DASK_RUNNER}" in args and "--dask_partition_size=1" in args
    assert normalize_args(["--runner=dask", "--dask_npartitions=3"]).count("--dask_npartitions=3") == 1
    assert not any(
        a.startswith("--dask_partition_size")
        for a in normalize_args(["--runner=dask", "--dask_npartitions=3"])
    )
    assert normalize_args([]) == ["--runner=FnApiRunner"]
    assert normalize_args(["--direct_num_workers=2"]) == ["--direct_num_workers=2", "--runner=FnApiRunner"]


def test_dask_without_address_starts_and_stops_a_local_cluster():
    with dask_cluster(["--runner=dask", "--dask_local_workers=1"]) as args:
        address = next(a.split("=", 1)[1] for a in args if a.startswith("--dask_client_address="))
        with Client(address, timeout=30) as client:
            assert len(client.scheduler_info()["workers"]) == 1
    with pytest.raises(OSError):
        Client(address, timeout=2)
    with dask_cluster(["--runner=FnApiRunner"]) as args:
        assert args == ["--runner=FnApiRunner"]
