"""The job's two DoFns around RunInference: chunk -> (meta, pixels), then (meta, embeddings) -> shard.

Both do all their work in ``process`` and keep nothing between elements, so no runner's
handling of ``finish_bundle`` can lose or duplicate anything: one chunk in, one element (or one
shard) out. Bad inputs are data: they travel in the chunk's ``failures`` and land in its shard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.utils import shared

from core.decode import DEFAULT_MAX_PIXELS
from core.faults import crash_point
from core.models import ModelIdentity
from pipeline import shards
from pipeline.entries import EntryDecoder, Pixels, decode_entries, failure, load_known, pixel_rows
from pipeline.handler import Embedded
from pipeline.worklist import Chunk, read_chunk, shard_name

NAMESPACE = "vistag"


@dataclass(frozen=True)
class ChunkMeta:
    """A decoded chunk without its pixels: shard rows in work-list order (``row`` indexes the
    chunk's pixels, -1 for content already embedded) and failures (uri, stage, reason)."""

    index: int
    rows: tuple[dict[str, Any], ...]
    failures: tuple[dict[str, str], ...]


class ReadDecodeFn(beam.DoFn):
    """Chunk -> ``[(ChunkMeta, pixels)]``: read, hash, decode and preprocess every entry.

    ``pixels`` is (E, 3, H, W) uint8, one image per row of ``meta.rows`` with ``row >= 0``; with
    ``defer_jpeg``, a :class:`~pipeline.gpu_decode.Pending` whose JPEGs the handler decodes. The
    output is a one-record batch of keyed examples, as RunInference expects when its handler
    skips batching. With ``decode_processes`` > 0 the entries are decoded by a pool of that many
    processes shared by the worker's threads (see :mod:`pipeline.decode_pool`), else in the
    worker's own thread.
    """

    def __init__(
        self,
        worklist: str,
        identity: ModelIdentity,
        known_hashes_file: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_processes: int = 0,
        defer_jpeg: bool = False,
    ):
        self._worklist = worklist
        self._decoder = EntryDecoder(identity, known_hashes_file, max_pixels, defer_jpeg)
        self._processes = decode_processes
        self._shared_known = shared.Shared()  # loaded once per worker process, not per bundle
        self._decoded = beam.metrics.Metrics.counter(NAMESPACE, "images_decoded")
        self._failed = beam.metrics.Metrics.counter(NAMESPACE, "images_failed")
        self._reused = beam.metrics.Metrics.counter(NAMESPACE, "images_known")
        self._chunk_ms = beam.metrics.Metrics.distribution(NAMESPACE, "read_decode_chunk_ms")

    def setup(self) -> None:
        known_file = self._decoder.known_hashes_file
        known = self._shared_known.acquire(lambda: load_known(known_file), tag=known_file)
        decoder = self._decoder
        self._local = EntryDecoder(
            decoder.identity, known_file, decoder.max_pixels, decoder.defer_jpeg
        ).setup(known)
        self._pool = None
        if self._processes > 0:
            from pipeline.decode_pool import acquire_pool

            self._pool = acquire_pool(self._decoder, self._processes)

    def teardown(self) -> None:
        if getattr(self, "_pool", None) is not None:
            from pipeline.decode_pool import release_pool

            release_pool(self._pool)
            self._pool = None

    def process(self, chunk: Chunk) -> Iterable[list[tuple[ChunkMeta, Pixels]]]:
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
        decoded = pixel_rows(batch)
        self._decoded.inc(decoded)
        self._failed.inc(len(failures))
        self._reused.inc(len(rows) - decoded)
        self._chunk_ms.update(int((time.perf_counter() - start) * 1000))
        yield [(ChunkMeta(chunk.index, tuple(rows), tuple(failures)), batch)]


class WriteShardFn(beam.DoFn):
    """``(ChunkMeta, PredictionResult)`` -> the chunk's shard, under its one deterministic name.

    A retried chunk (a worker died, the engine ran it again) rewrites the same shard, so the
    output never holds an image twice. Emits nothing: the indexer lists the shard folder.
    """

    def __init__(self, output: str, identity: ModelIdentity, tag: str):
        self._output = output
        self._identity = identity
        self._tag = tag
        self._images = beam.metrics.Metrics.counter(NAMESPACE, "images_written")
        self._shards = beam.metrics.Metrics.counter(NAMESPACE, "shards_written")
        # the read stage's counter of the same name: a query by name sums both steps
        self._late_failed = beam.metrics.Metrics.counter(NAMESPACE, "images_failed")

    def process(self, element: tuple[ChunkMeta, PredictionResult]) -> Iterable[None]:
        meta, result = element
        inference = result.inference
        if isinstance(inference, Embedded):  # rows the handler could not decode become failures
            late = late_failures(meta, inference.failed)
            self._late_failed.inc(len(late.failures) - len(meta.failures))
            meta, inference = late, inference.xb
        dim = self._identity.embed_dim
        xb = np.asarray(inference, dtype=np.float32).reshape(-1, dim)
        embedded = sum(1 for r in meta.rows if r["row"] >= 0)
        if xb.shape[0] != embedded:
            raise ValueError(f"chunk {meta.index}: {xb.shape[0]} embeddings for {embedded} images")
        name = shard_name(self._tag, meta.index)
        engine = json.loads(result.model_id) if result.model_id else None  # see pipeline.handler.Replicas
        shards.write_shard(
            self._output, meta.rows, xb, meta.failures, self._identity.to_dict(), name=name, engine=engine
        )
        crash_point("shard-written")
        self._images.inc(len(meta.rows) + len(meta.failures))
        self._shards.inc()
        return ()


def late_failures(meta: ChunkMeta, failed: Iterable[tuple[int, str]]) -> ChunkMeta:
    """``meta`` with the rows ``failed`` (row, reason) at inference moved to its failures as ``decode``
    failures, and the rows after them renumbered to index the embeddings that remain."""
    reasons = dict(failed)
    if not reasons:
        return meta
    rows: list[dict[str, Any]] = []
    failures = list(meta.failures)
    for row in meta.rows:
        n = row["row"]
        if n in reasons:
            failures.append(failure(row["uri"], "decode", reasons[n]))
        else:
            rows.append(row | {"row": n - sum(1 for r in reasons if r < n)} if n >= 0 else row)
    return ChunkMeta(meta.index, tuple(rows), tuple(failures))
