"""Shared fixtures: a tiny random-weight OpenCLIP model, generated corpora, a CLI runner."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # default tests never touch the network

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_PREPROCESS = {
    "size": 32, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic", "resize_mode": "shortest",
}  # fmt: skip


def make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write a ``local-dir:`` OpenCLIP model with random weights (about 7 MB) into ``folder``."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CFG)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": TINY_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Model spec of the tiny random model: ``local-dir:/...``."""
    return "local-dir:" + str(make_tiny_model(tmp_path_factory.mktemp("tiny-clip")))


BAD_FILES = {
    "corrupt.jpg": b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20,
    "text.png": b"<html><body>not an image</body></html>",
    "empty.jpg": b"",
}


@dataclass(frozen=True)
class Corpus:
    root: Path
    good: tuple[Path, ...]
    bad: tuple[Path, ...]


def write_corpus(root: Path, n: int = 24, seed: int = 0) -> Corpus:
    """``n`` generated shape images (JPEG and PNG, several sizes) plus bad files, some in a subfolder."""
    from vistag import synth

    made = synth.make_corpus(root / "shapes", n, seed=seed)
    good = [Path(p) for p, _ in made]
    textures = root / "textures"
    textures.mkdir()
    good += _textures(textures, seed)
    bad = []
    for name, data in BAD_FILES.items():
        (root / name).write_bytes(data)
        bad.append(root / name)
    truncated = root / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:200] if good[0].suffix == ".jpg" else _jpeg_bytes()[:200])
    bad.append(truncated)
    return Corpus(root, tuple(sorted(good)), tuple(sorted(bad)))


def _jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _textures(folder: Path, seed: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate([(40, 40), (120, 80), (33, 97)]):
        arr = (rng.random((h, w, 3)) * 255).astype("uint8")
        path = folder / f"noise-{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


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
    from tests import pg

    if not pg.available():
        pytest.skip("PostgreSQL server binaries or psycopg not installed (apt-get install postgresql)")
    with pg.postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty catalog database of each kind: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return fresh_database(request.getfixturevalue("postgres_url"))


def fresh_database(base_url: str) -> str:
    """Create a new empty database on the server of ``base_url``; return its URL."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return base_url.rsplit("/", 1)[0] + f"/{name}"


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
