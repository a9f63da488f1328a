"""The read path: light (read commands import no Beam, a cached query no torch), filtered searches
scored like unfiltered ones on every index type, hits joined from the version's hit table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer import vectors, versions
from indexer.catalog import ImageFilter
from indexer.tables import HitTable
from vistag import Archive

ROOT = Path(__file__).resolve().parents[1]
IMPORTED = """
import json, sys
from vistag.cli import main
code = main(sys.argv[1:])
heavy = [m for m in ("apache_beam", "torch", "open_clip", "scipy", "pyarrow", "alembic") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def _imports(*args: object) -> tuple[int, list[str]]:
    """Run ``vistag ARGS`` in a fresh process: (exit code, heavy modules it imported)."""
    run = subprocess.run(
        [sys.executable, "-c", IMPORTED, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    result = json.loads(run.stderr.strip().splitlines()[-1])
    return result["code"], result["heavy"]


def test_read_commands_import_neither_beam_nor_torch(home_copy):
    home, corpus = home_copy
    assert _imports("search", "a photo of a red circle", "--home", home) == (
        0,
        ["torch", "open_clip"],
    )  # a new query
    assert _imports("search", "a photo of a red circle", "--home", home) == (
        0,
        [],
    )  # now cached: no model at all
    for args in (
        ["status"],
        ["runs"],
        ["failures"],
        ["export"],
        ["similar", "1"],
        ["explain", corpus.good[0]],
    ):
        code, heavy = _imports(*args, "--home", home)
        assert code in (0, 4) and heavy == [], args  # explain says "no tags yet" (0)


def test_the_server_never_imports_beam():
    code = "import sys; import vistag.http; from vistag.http import create_app; print('apache_beam' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.stdout.strip() == "False", run.stderr


def test_a_server_keeps_new_queries_out_of_the_catalog(home_copy):
    from vistag.http import ServiceConfig
    from vistag.http.service import Service

    home, _ = home_copy
    with Archive(home) as archive:
        before = archive.catalog.text_vector_sample(
            archive.catalog.model_id(archive.searcher.version().identity), 10**6
        )
        service = Service(archive, ServiceConfig())
        first = service.search_text("a photo of a green star", 3, ImageFilter())
        again = service.search_text(
            "a photo of a green star", 3, ImageFilter()
        )  # from the server's own memory
        after = archive.catalog.text_vector_sample(
            archive.catalog.model_id(archive.searcher.version().identity), 10**6
        )
    assert [h["id"] for h in first["hits"]] == [h["id"] for h in again["hits"]]
    assert len(after) == len(before)  # anyone's queries never grow the database


@pytest.mark.parametrize(
    ("factory", "atol"), [("Flat", 1e-5), ("IVF4,SQ8", 2e-3), ("IVF4,PQ4x4", 1e-5), ("HNSW8,Flat", 1e-5)]
)
def test_filtered_search_is_exact_and_scored_like_unfiltered(corpus, tiny_model, tmp_path, factory, atol):
    """A filter restricts the same search: on every index type it returns the best of the matching
    images with their exact cosine (PQ codes re-ranked, as unfiltered searches are; 8-bit codes
    within their quantisation error)."""
    with Archive(tmp_path / "home") as archive:
        archive.index([corpus.root], model=tiny_model, index_type=factory)
        searcher = archive.searcher
        version = searcher.version()
        rows = archive.catalog.images()
        prefix = str(corpus.root / "shapes") + "/"
        keep = np.array([r["id"] for r in rows if r["uri"].startswith(prefix)])
        xb = vectors.stored_vectors(archive.home, archive.catalog, version.identity, keep.tolist())
        xq = xb[:2] * 0.9 + xb[2:4] * 0.1
        xq /= np.linalg.norm(xq, axis=1, keepdims=True)
        got = searcher.search_vectors(xq, 5, ImageFilter(prefix=prefix))
        unfiltered = searcher.search_vectors(xq, 5)
    exact = xq @ xb.T
    for q, hits in enumerate(got):
        assert hits and all(h.uri.startswith(prefix) for h in hits)
        assert [h.score for h in hits] == pytest.approx(sorted(exact[q], reverse=True)[: len(hits)], abs=atol)
        by_id = {h.id: h.score for h in unfiltered[q]}
        assert all(by_id[h.id] == pytest.approx(h.score, abs=1e-6) for h in hits if h.id in by_id)
    assert searcher.search_vectors(xq, 5, ImageFilter(prefix="/nowhere/")) == [[], []]


def test_hits_come_from_the_versions_hit_table(home_copy, monkeypatch):
    home, corpus = home_copy
    with Archive(home) as archive:
        version = archive.searcher.version()
        table = version.hit_table()
        assert table is not None and len(table.ids) == archive.status()["indexed"]
        row = archive.catalog.images()[0]
        assert table.rows([row["id"], 10**9]) == {
            row["id"]: (row["id"], row["uri"], row["width"], row["height"], row["sha256"])
        }
        want = archive.search("a photo of a red circle", k=5)

        def no_sql(*args, **kwargs):
            raise AssertionError("a search joined its hits through the catalog")

        with monkeypatch.context() as m:
            m.setattr(archive.catalog, "images", no_sql)
            assert archive.search("a photo of a red circle", k=5) == want
    for name in HitTable.FILES:  # a version written before hit tables: the catalog joins its hits
        (version.path / name).unlink()
    manifest = json.loads((version.path / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k not in HitTable.FILES}
    (version.path / "manifest.json").write_text(json.dumps(manifest))
    with Archive(home) as archive:
        assert archive.searcher.version().hit_table() is None
        assert archive.search("a photo of a red circle", k=5) == want


def test_a_damaged_hit_table_is_reported(home_copy):
    from core.errors import DamagedState

    home, _ = home_copy
    version = versions.current_version(Archive(home).home)
    with open(version.path / HitTable.URIS, "r+b") as fh:
        fh.write(b"X")
    with Archive(home) as archive, pytest.raises(DamagedState, match="hits-uris.bin"):
        archive.search("a photo of a red circle", k=5)


LOADED = """
import json, sys
from vistag.cli import main
code = main(sys.argv[1:])
heavy = [m for m in ("torch", "open_clip", "apache_beam.ml") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def test_an_unchanged_reindex_imports_neither_torch_nor_runinference(home_copy):
    """A nightly re-index of an unchanged archive has nothing to embed: it builds no model and
    imports neither torch nor Beam's RunInference (seconds of imports on every run)."""
    home, corpus = home_copy
    run = subprocess.run(
        [sys.executable, "-c", LOADED, "index", str(corpus.root), "--home", str(home), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    result = json.loads(run.stderr.strip().splitlines()[-1])
    plan = json.loads(run.stdout)["plan"]
    assert (plan["new"], plan["changed"], plan["unchanged"]) == (0, 0, len(corpus.good) + len(corpus.bad))
    assert result == {"code": 0, "heavy": []}


def test_a_remembered_model_name_is_not_looked_up_again():
    """The spec an archive remembers was checked when it was stored: taking it again needs no
    OpenCLIP import; any other name or tag is still checked against OpenCLIP's lists."""
    code = """
import sys
from core.errors import ModelLoadError
from core.models import ModelSpec, parse_model_spec
known = ModelSpec(None, "ViT-B-32", "laion2b_s34b_b79k")
assert parse_model_spec("ViT-B-32", "laion2b_s34b_b79k", known) is known
print("open_clip" in sys.modules)
try:
    parse_model_spec("ViT-B-32", "no-such-tag", known)
except ModelLoadError as err:
    print("open_clip" in sys.modules, "no-such-tag" in str(err))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.stdout.split() == ["False", "True", "True"], run.stderr
