"""Shared fixtures: a tiny random-weight OpenCLIP model, generated corpora, a CLI runner."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from devkit import postgres
from vistag.synth import Corpus, make_tiny_model, write_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # default tests never touch the network
# The default engine (auto: OpenVINO on this CPU when installed) runs everywhere; its exports are
# shared by every home of the session, so each test model is exported once.
_ENGINE_CACHE = tempfile.mkdtemp(prefix="vistag-engines-")
os.environ.setdefault("VISTAG_ENGINE_CACHE", _ENGINE_CACHE)
atexit.register(shutil.rmtree, _ENGINE_CACHE, True)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Model spec of the tiny random model: ``local-dir:/...``."""
    return "local-dir:" + str(make_tiny_model(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(scope="session")
def indexed_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Corpus]:
    """A home indexed once with the tiny model, shared: tests must not change its corpus files."""
    root = tmp_path_factory.mktemp("indexed")
    corpus = write_corpus(root / "corpus")
    home = root / "home"
    from vistag import Archive

    with Archive(home) as archive:
        archive.index([corpus.root], model=tiny_model, batch_size=8)
    return home, corpus


@pytest.fixture
def home_copy(indexed_home: tuple[Path, Corpus], tmp_path: Path) -> tuple[Path, Corpus]:
    home, corpus = indexed_home
    target = tmp_path / "home"
    shutil.copytree(home, target)
    return target, corpus


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run ``vistag`` in-process with the given arguments; returns code, stdout and stderr."""
    from vistag.cli import main

    def run(*args: object) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A database on a private PostgreSQL server on loopback (skipped without Debian's postgresql)."""
    if not postgres.available():
        pytest.skip("PostgreSQL server binaries or psycopg not installed (apt-get install postgresql)")
    with postgres.postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalog database of each kind: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return postgres.fresh_database(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="module")
def one_torch_thread() -> object:
    """One torch thread in this process while a module runs (for modules that start Dask workers:
    they share the same few cores, and oversubscribed torch threads slow everything several-fold)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cluster() -> object:
    """A Dask cluster of 2 single-threaded worker processes on 127.0.0.1, closed after the module."""
    from pipeline.runners import local_cluster

    with local_cluster(workers=2) as running:
        yield running


@pytest.fixture(scope="session")
def family_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> Path:
    """A home of 5 pictures, 2 of them with every variant (an identical copy, re-encodes, a crop...);
    shared: tests copy it before changing anything."""
    from vistag import Archive
    from vistag.synth.families import make_families

    root = tmp_path_factory.mktemp("families")
    list(make_families(root / "photos", distinct=5, families=2))
    with Archive(root / "home") as archive:
        archive.index([root / "photos"], model=tiny_model, batch_size=8)
    return root / "home"


#: file -> (keywords, EXIF date taken or None: its modification time is set to FACET_MTIME instead)
FACET_PHOTOS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "a.jpg": (("Alpha", "Beach"), "2019:05:01 10:00:00"),
    "b.jpg": (("Beach",), "2020:06:15 10:00:00"),
    "c.jpg": (("Beach", "City"), "2021:07:20 10:00:00"),
    "d.jpg": (("City",), "2022:08:01 10:00:00"),
    "e.jpg": ((), None),
    "f.jpg": (("beach",), "2023:01:01 10:00:00"),  # another spelling of the same keyword
}
FACET_CAMERAS = {"a.jpg": "Canon EOS R5", "b.jpg": "Canon EOS R5", "d.jpg": "NIKON Z 6"}  # EXIF Model only
FACET_MTIME = 1514887200.0  # 2018-01-02 10:00 UTC
FACET_LABELS = ["a cat", "a dog", "a tree", "a car"]


@pytest.fixture(scope="session")
def facet_home(tmp_path_factory: pytest.TempPathFactory, tiny_model: str) -> tuple[Path, Path]:
    """(home, photos): 6 photos with keywords and dates taken (FACET_PHOTOS), three with a camera
    (FACET_CAMERAS), indexed and tagged
    with FACET_LABELS (3 best each); shared: tests copy it before changing anything."""
    import subprocess

    import numpy as np
    from PIL import Image

    from vistag import Archive

    exiftool = shutil.which("exiftool")
    if exiftool is None:
        pytest.skip("exiftool is not installed")
    root = tmp_path_factory.mktemp("facets")
    photos = root / "photos"
    photos.mkdir()
    for seed, (name, (words, taken)) in enumerate(FACET_PHOTOS.items()):
        path = photos / name
        pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        args = [f"-Keywords={w}" for w in words] + ([f"-DateTimeOriginal={taken}"] if taken else [])
        args += [f"-Model={FACET_CAMERAS[name]}"] if name in FACET_CAMERAS else []
        if args:
            subprocess.run([exiftool, "-q", "-overwrite_original", *args, str(path)], check=True)
        if taken is None:
            os.utime(path, (FACET_MTIME, FACET_MTIME))
    with Archive(root / "home") as archive:
        archive.index([photos], model=tiny_model, batch_size=8)
        archive.tag(FACET_LABELS, top=3)
    return root / "home", photos
