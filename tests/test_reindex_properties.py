"""Re-indexing as a state machine: random add / modify / move / delete / duplicate sequences.

After every `index` run the catalog and the published index must hold exactly the files on
disk, each with the sha256 of its current content and the vector of that content.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from indexer import versions
from vistag import Archive

OPS = st.lists(
    st.tuples(st.sampled_from(["add", "modify", "move", "delete", "duplicate"]), st.integers(0, 1000)),
    min_size=1,
    max_size=4,
)


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((24, 24, 3)) * 255).astype("uint8")).save(path)


def _apply(folder: Path, op: str, n: int, counter: list[int]) -> None:
    files = sorted(folder.glob("*.png"))
    counter[0] += 1
    if op == "add" or not files:
        _image(folder / f"img-{counter[0]}.png", 10_000 + counter[0])
        return
    target = files[n % len(files)]
    if op == "modify":
        _image(target, 20_000 + counter[0])
    elif op == "move":
        target.rename(folder / f"moved-{counter[0]}.png")
    elif op == "delete":
        target.unlink()
    else:
        shutil.copy(target, folder / f"dup-{counter[0]}.png")


def _check(archive: Archive, folder: Path) -> None:
    on_disk = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}
    live = {r["uri"]: r["sha256"] for r in archive.catalog.images()}
    assert live == on_disk
    index = versions.current_version(archive.home).load()
    ids = {r["uri"]: r["id"] for r in archive.catalog.images()}
    assert index.ntotal == len(on_disk)
    by_sha: dict[str, np.ndarray] = {}
    for uri, sha in on_disk.items():
        vec = index.reconstruct(ids[uri])
        if sha in by_sha:  # identical content, identical vector
            np.testing.assert_array_equal(vec, by_sha[sha])
        by_sha[sha] = vec


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_random_changes_then_reindex(ops, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    folder = root / "photos"
    folder.mkdir()
    for i in range(4):
        _image(folder / f"start-{i}.png", i)
    counter = [0]
    with Archive(root / "home") as archive:
        archive.index([folder], model=tiny_model)
        for op, n in ops:
            _apply(folder, op, n, counter)
            archive.index([folder], model=tiny_model)
            _check(archive, folder)


def test_reader_sees_only_complete_versions_during_reindex(tmp_path, corpus, tiny_model):
    """A reader querying in a loop while a re-index publishes sees no error and whole versions."""
    home = tmp_path / "home"
    with Archive(home) as writer:
        writer.index([corpus.root], model=tiny_model)
    counts: set[int] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        with Archive(home) as reader:
            while not stop.is_set():
                try:
                    hits = reader.similar(corpus.good[0], k=100)
                    assert hits[0].uri == str(corpus.good[0])
                    counts.add(len(hits))
                except BaseException as err:  # noqa: BLE001 - every failure is a test failure
                    errors.append(err)
                    return

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(3):
            _image(corpus.root / f"extra-{i}.png", 500 + i)
        with Archive(home) as writer:
            writer.index([corpus.root], model=tiny_model)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert counts <= {len(corpus.good), len(corpus.good) + 3} and len(corpus.good) + 3 in counts
