"""Crash injection: a real `vistag index` process killed at each stage, then re-run.

After the re-run, catalog and index must equal an uninterrupted run's: same images, same
content hashes, same vectors, no duplicates, nothing half-published, and completed shards not
embedded again.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer import versions
from vistag import Archive

SHARD = 5


def _run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("vistag"))
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=300, env=os.environ | (env or {})
    )


def _state(home: Path) -> tuple[dict, dict]:
    """(uri -> (status, sha256)) for every image, and (uri -> vector) from the published index."""
    with Archive(home) as archive:
        images = {r["uri"]: (r["status"], r["sha256"]) for r in archive.catalog.images(status=None)}
        version = versions.current_version(archive.home)
        index = version.load()
        uris = {r["id"]: r["uri"] for r in archive.catalog.images()}
        vectors = {uris[i]: index.reconstruct(i) for i in uris}
        assert index.ntotal == len(uris)
    return images, vectors


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    """An uninterrupted run over a corpus with a deletion and a change between two runs."""
    from vistag.synth import write_corpus

    root = tmp_path_factory.mktemp("crash-ref")
    corpus = write_corpus(root / "corpus", n=16)
    home = root / "home"
    with Archive(home) as archive:
        archive.index([corpus.root], model=tiny_model, shard_size=SHARD)
    return corpus, home, _state(home)


@pytest.mark.parametrize(
    "point", ["planned", "shard-written:2", "shard-applied:2", "deleted", "version-written", "published"]
)
def test_killed_run_then_rerun_equals_uninterrupted(point, reference, tiny_model, tmp_path):
    corpus, _, (ref_images, ref_vectors) = reference
    home = tmp_path / "home"
    args = ["index", str(corpus.root), "--home", str(home), "--model", tiny_model, "--shard-size", str(SHARD)]
    crashed = _run_cli(args, {"VISTAG_CRASH_AT": point})
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    if point.startswith(("version-written", "published")):
        with Archive(home) as archive:  # readers are never shown a half-built version
            if point == "version-written":
                with pytest.raises(Exception, match="no index published"):
                    versions.current_version(archive.home)
    with Archive(home) as archive:
        result = archive.index([corpus.root], model=tiny_model, shard_size=SHARD)
        runs = archive.runs()
    assert runs[1]["status"] == "interrupted" and runs[0]["status"] == "ok"
    if point == "shard-written:2":
        assert 0 < result.embedded <= len(corpus.good) - 2 * SHARD + len(corpus.bad)  # first shards kept
    if point in ("shard-applied:2", "deleted", "version-written", "published"):
        assert result.embedded == 0  # everything embedded before the crash was kept
    images, vectors = _state(home)
    assert images == ref_images
    assert vectors.keys() == ref_vectors.keys()
    for uri, vec in vectors.items():
        np.testing.assert_allclose(vec, ref_vectors[uri], atol=1e-5)
    leftovers = [p for p in (home / "index").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
