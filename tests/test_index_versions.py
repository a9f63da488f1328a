"""FAISS index build (exact answers), version folders, atomic publish and pruning."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import IndexNotFound, InputError
from core.models import ModelIdentity
from indexer import build, versions
from indexer.home import Home

IDENTITY = ModelIdentity("m", None, 8, {"size": 32}, "")


def _data(n=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((n, d)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    return xb, np.arange(1000, 1000 + n, dtype=np.int64)


@pytest.mark.parametrize("index_type", ["Flat", "HNSW32,Flat"])
def test_build_index_returns_catalog_ids_and_exact_scores(index_type):
    xb, ids = _data()
    index = build.build_index(xb, ids, index_type)
    D, I = index.search(xb[:5], 3)
    assert I[:, 0].tolist() == ids[:5].tolist()  # each vector finds itself, under its catalog id
    np.testing.assert_allclose(D[:, 0], 1.0, atol=1e-5)
    brute = np.sort(xb[:5] @ xb.T, axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(D, brute, atol=1e-5)
    np.testing.assert_allclose(index.reconstruct(1007), xb[7], atol=1e-6)
    with pytest.raises(InputError, match="bad FAISS index type"):
        build.build_index(xb, ids, "NotAnIndex")


def test_publish_switches_pointer_and_keeps_previous(tmp_path):
    home = Home.resolve(tmp_path).ensure()
    with pytest.raises(IndexNotFound):
        versions.current_version(home)
    xb, ids = _data()
    made = []
    for n in (50, 100, 150):
        version = versions.write_version(
            home, IDENTITY, build.build_index(xb[:n], ids[:n], "Flat"), "Flat", None
        )
        versions.publish(home, version)
        made.append(version)
        current = versions.current_version(home)
        assert current.path == version.path and current.load().ntotal == n
        assert current.identity.key == IDENTITY.key
    assert not made[0].path.exists()  # older than the previous one: pruned
    assert made[1].path.exists() and made[2].path.exists()
    assert sorted(p.name for p in (tmp_path / "index" / IDENTITY.key).iterdir()) == ["v000002", "v000003"]
    assert not list((tmp_path / "index").glob("CURRENT.tmp-*"))


def test_unpublished_version_is_not_served(tmp_path):
    home = Home.resolve(tmp_path).ensure()
    xb, ids = _data()
    first = versions.write_version(home, IDENTITY, build.build_index(xb, ids, "Flat"), "Flat", None)
    versions.publish(home, first)
    versions.write_version(home, IDENTITY, build.build_index(xb[:10], ids[:10], "Flat"), "Flat", None)
    assert versions.current_version(home).path == first.path
