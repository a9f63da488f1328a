"""The job's two DoFns around RunInference: chunk -> (meta, pixels), then (meta, embeddings) -> shard.

Both do all their work in ``process`` and keep nothing between elements, so no runner's
handling of ``finish_bundle`` can lose or duplicate anything: one chunk in, one element (or one
shard) out. Bad inputs are data: they travel in the chunk's ``failures`` and land in its shard.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.utils import shared

from pipeline import shards
from pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image, max_file_bytes
from pipeline.inputs import FileEntry
from pipeline.preprocess import SplitTransform, split_transform, to_pixels
from pipeline.worklist import Chunk, read_chunk, shard_name
from vistag import uris
from vistag.faults import crash_point
from vistag.models import ModelIdentity

NAMESPACE = "vistag"


@dataclass(frozen=True)
class ImageKey:
    """What the pipeline learns about an image before embedding it."""

    uri: str
    sha256: str
    size: int
    mtime: float
    width: int
    height: int

    def row(self, row: int) -> dict[str, Any]:
        return {
            "uri": self.uri, "sha256": self.sha256, "size": self.size, "mtime": self.mtime,
            "width": self.width, "height": self.height, "row": row,
        }  # fmt: skip


@dataclass(frozen=True)
class ChunkMeta:
    """A decoded chunk without its pixels: shard rows in work-list order (``row`` indexes the
    chunk's pixels, -1 for content already embedded) and failures (uri, stage, reason)."""

    index: int
    rows: tuple[dict[str, Any], ...]
    failures: tuple[dict[str, str], ...]


class _KnownHashes(frozenset):
    """A frozenset that ``shared.Shared`` can hold (it needs weak references)."""


def _failure(uri: str, stage: str, reason: str) -> dict[str, str]:
    return {"uri": uri, "stage": stage, "reason": reason[:500]}


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}"


def _load_known(path: str | None) -> _KnownHashes:
    if not path:
        return _KnownHashes()
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return _KnownHashes(line.strip() for line in fh.read().decode().splitlines() if line.strip())


class EntryDecoder:
    """Read, hash, decode and preprocess one work-list entry; the same code in a Beam worker thread
    and in a decode process (see :mod:`pipeline.decode_pool`). Picklable until :meth:`setup`."""

    def __init__(self, model: dict[str, Any], known_hashes_file: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):  # fmt: skip
        self.model = model
        self.known_hashes_file = known_hashes_file
        self.max_pixels = max_pixels

    def setup(self, known: frozenset[str] | None = None) -> EntryDecoder:
        self._split: SplitTransform = split_transform(ModelIdentity.from_dict(self.model))
        self._draft = int(max(self._split.shape[1:]))
        self._known = known if known is not None else _load_known(self.known_hashes_file)
        return self

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._split.shape

    def one(self, entry: FileEntry) -> dict[str, str] | ImageKey | tuple[ImageKey, np.ndarray]:
        """A failure row, a key of already-embedded content, or a key and its (3, H, W) pixels."""
        limit = max_file_bytes(self.max_pixels)
        if entry.size > limit:
            return _failure(entry.uri, "read", f"file of {entry.size} bytes is larger than the {limit} bytes read for an image")
        try:
            data = uris.read_bytes(entry.uri, max_bytes=limit)
        except Exception as err:  # any filesystem's error: vanished, permission, I/O, not a regular file
            return _failure(entry.uri, "read", _reason(err))
        sha = hashlib.sha256(data).hexdigest()
        if sha in self._known:
            return ImageKey(entry.uri, sha, len(data), entry.mtime, 0, 0)
        try:
            decoded = decode_image(data, max_pixels=self.max_pixels, draft_size=self._draft)
        except DecodeError as err:
            return _failure(entry.uri, "decode", err.reason)
        except Exception as err:  # a bad file must never stop the run
            return _failure(entry.uri, "preprocess", _reason(err))
        try:
            arr = to_pixels(self._split.to_image(decoded.image))
            if arr.shape != self._split.shape:
                raise ValueError(f"preprocessed to {arr.shape}, expected {self._split.shape}")
        except Exception as err:
            return _failure(entry.uri, "preprocess", _reason(err))
        return ImageKey(entry.uri, sha, len(data), entry.mtime, decoded.width, decoded.height), arr


class ReadDecodeFn(beam.DoFn):
    """Chunk -> ``[(ChunkMeta, pixels)]``: read, hash, decode and preprocess every entry.

    ``pixels`` is (E, 3, H, W) uint8, one image per row of ``meta.rows`` with ``row >= 0``. The
    output is a one-record batch of keyed examples, as RunInference expects when its handler
    skips batching. With ``decode_processes`` > 0 the entries are decoded by a pool of that many
    processes shared by the worker's threads (see :mod:`pipeline.decode_pool`), else in the
    worker's own thread.
    """

    def __init__(self, worklist: str, model: dict[str, Any], known_hashes_file: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, decode_processes: int = 0):  # fmt: skip
        self._worklist = worklist
        self._decoder = EntryDecoder(model, known_hashes_file, max_pixels)
        self._processes = decode_processes
        self._shared_known = shared.Shared()  # loaded once per worker process, not per bundle
        self._decoded = beam.metrics.Metrics.counter(NAMESPACE, "images_decoded")
        self._failed = beam.metrics.Metrics.counter(NAMESPACE, "images_failed")
        self._reused = beam.metrics.Metrics.counter(NAMESPACE, "images_known")
        self._chunk_ms = beam.metrics.Metrics.distribution(NAMESPACE, "read_decode_chunk_ms")

    def setup(self) -> None:
        known_file = self._decoder.known_hashes_file
        known = self._shared_known.acquire(lambda: _load_known(known_file), tag=known_file)
        self._local = EntryDecoder(self._decoder.model, known_file, self._decoder.max_pixels).setup(known)
        self._pool = None
        if self._processes > 0:
            from pipeline.decode_pool import acquire_pool

            self._pool = acquire_pool(self._decoder, self._processes)

    def teardown(self) -> None:
        if getattr(self, "_pool", None) is not None:
            from pipeline.decode_pool import release_pool

            release_pool(self._pool)
            self._pool = None

    def process(self, chunk: Chunk) -> Iterable[list[tuple[ChunkMeta, np.ndarray]]]:
        start = time.perf_counter()
        entries = read_chunk(self._worklist, chunk)
        if self._pool is not None:
            outcomes, batch = self._pool.decode(entries, self._local)
        else:
            outcomes, batch = decode_entries(entries, self._local)
        rows: list[dict[str, Any]] = []
        failures: list[dict[str, str]] = []
        for outcome in outcomes:
            if isinstance(outcome, dict):
                failures.append(outcome)
            else:
                key, row = outcome
                rows.append(key.row(row))
        decoded = int(len(batch))
        self._decoded.inc(decoded)
        self._failed.inc(len(failures))
        self._reused.inc(len(rows) - decoded)
        self._chunk_ms.update(int((time.perf_counter() - start) * 1000))
        yield [(ChunkMeta(chunk.index, tuple(rows), tuple(failures)), batch)]


Outcome = dict[str, str] | tuple[ImageKey, int]


def decode_entries(entries: Sequence[FileEntry], decoder: EntryDecoder) -> tuple[list[Outcome], np.ndarray]:
    """Decode ``entries`` in this thread: per entry a failure row or (key, row in pixels; -1 when
    already embedded), and the (E, 3, H, W) uint8 pixels of the decoded ones."""
    outcomes: list[Outcome] = []
    pixels: list[np.ndarray] = []
    for entry in entries:
        outcome = decoder.one(entry)
        if isinstance(outcome, dict):
            outcomes.append(outcome)
        elif isinstance(outcome, ImageKey):
            outcomes.append((outcome, -1))
        else:
            key, arr = outcome
            outcomes.append((key, len(pixels)))
            pixels.append(arr)
    batch = np.stack(pixels) if pixels else np.zeros((0, *decoder.shape), np.uint8)
    return outcomes, batch


class WriteShardFn(beam.DoFn):
    """``(ChunkMeta, PredictionResult)`` -> the chunk's shard, under its one deterministic name.

    A retried chunk (a worker died, the engine ran it again) rewrites the same shard, so the
    output never holds an image twice. Emits nothing: the indexer lists the shard folder.
    """

    def __init__(self, output: str, model: dict[str, Any], tag: str):
        self._output = output
        self._model = model
        self._tag = tag
        self._images = beam.metrics.Metrics.counter(NAMESPACE, "images_written")
        self._shards = beam.metrics.Metrics.counter(NAMESPACE, "shards_written")

    def process(self, element: tuple[ChunkMeta, PredictionResult]) -> Iterable[None]:
        meta, result = element
        dim = int(self._model["embed_dim"])
        xb = np.asarray(result.inference, dtype=np.float32).reshape(-1, dim)
        embedded = sum(1 for r in meta.rows if r["row"] >= 0)
        if xb.shape[0] != embedded:
            raise ValueError(f"chunk {meta.index}: {xb.shape[0]} embeddings for {embedded} images")
        name = shard_name(self._tag, meta.index)
        shards.write_shard(self._output, meta.rows, xb, meta.failures, self._model, name=name)
        crash_point("shard-written")
        self._images.inc(len(meta.rows) + len(meta.failures))
        self._shards.inc()
        return ()
