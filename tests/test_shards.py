"""Shard format round trip, atomic visibility, and the pipeline's own entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import ShardFormatError
from pipeline import shards

MODEL = {"model": "m", "pretrained": None, "embed_dim": 4, "preprocess": {}, "fingerprint": "", "key": "k"}


def _meta(i, row):
    return {
        "uri": f"/x/{i}.jpg",
        "sha256": f"{i:064x}",
        "size": 10 + i,
        "mtime": 1.5 * i,
        "width": 3,
        "height": 4,
        "row": row,
        "phash": f"{i:016x}" if row >= 0 else None,  # content already embedded is not decoded again
        "taken": 1.6e9 + i if i % 2 else None,
    }


def test_round_trip(tmp_path):
    xb = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    meta = [_meta(0, 0), _meta(1, -1), _meta(2, 1)]
    fails = [{"uri": "/x/bad.jpg", "stage": "decode", "reason": "empty file"}]
    name = shards.write_shard(str(tmp_path), meta, xb, fails, MODEL)
    assert shards.list_shards(str(tmp_path)) == [name]
    shard = shards.read_shard(str(tmp_path), name)
    unset = dict.fromkeys(name for name, _ in shards.META_COLUMNS)  # a column a row left out: None
    assert shard.meta == [unset | m for m in meta] and shard.failures == fails
    np.testing.assert_array_equal(shard.embeddings, xb)
    assert shard.manifest["model"] == MODEL and shard.manifest["format_version"] == shards.FORMAT_VERSION
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_shard_without_manifest_is_invisible(tmp_path):
    name = shards.write_shard(str(tmp_path), [_meta(0, 0)], np.zeros((1, 4), np.float32), [], MODEL)
    (tmp_path / f"{name}.json").unlink()  # a crash before the manifest rename
    assert shards.list_shards(str(tmp_path)) == []


def test_unknown_format_and_inconsistent_counts_are_rejected(tmp_path):
    name = shards.write_shard(str(tmp_path), [_meta(0, 0)], np.zeros((1, 4), np.float32), [], MODEL)
    manifest = tmp_path / f"{name}.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(data | {"images": 5}))
    with pytest.raises(ShardFormatError, match="counts disagree"):
        shards.read_shard(str(tmp_path), name)
    manifest.write_text(json.dumps(data | {"format_version": 99}))
    with pytest.raises(ShardFormatError, match="format version"):
        shards.read_shard(str(tmp_path), name)


def test_pipeline_run_entry_point_with_test_pipeline(tmp_path, corpus, tiny_model):
    """``pipeline.job.run(argv, test_pipeline)`` writes shards holding every good and bad file."""
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.job import run

    out = tmp_path / "shards"
    argv = ["--inputs", str(corpus.root), "--output", str(out), "--model", tiny_model, "--shard-size", "10"]
    names = run(argv, test_pipeline=TestPipeline(argv=["--runner=FnApiRunner"]))
    read = [shards.read_shard(str(out), n) for n in names]
    uris = sorted(m["uri"] for s in read for m in s.meta)
    assert uris == sorted(str(p) for p in corpus.good)
    assert sorted(f["uri"] for s in read for f in s.failures) == sorted(str(p) for p in corpus.bad)
    xb = np.concatenate([s.embeddings for s in read])
    assert xb.shape == (len(corpus.good), 32)
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-5)
    assert all(len(s.meta) + len(s.failures) <= 10 for s in read)


def test_a_pipeline_that_fails_to_build_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Beam makes a folder when a pipeline is constructed and removes it only when ``run()`` ends."""
    import tempfile

    import apache_beam as beam

    from pipeline import job

    def fail(*args, **kwargs):
        raise RuntimeError("build failed")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(job, "build", fail)
    p = beam.Pipeline(argv=["--runner=FnApiRunner"])
    assert list(tmp_path.glob("beam-pipeline-temp*"))  # the folder the run must not leave behind
    with pytest.raises(RuntimeError, match="build failed"):
        job._run_pipeline(p, None, None, None)
    assert not list(tmp_path.glob("beam-pipeline-temp*"))
