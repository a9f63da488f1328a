"""The embedding shard format (version 1), written by the pipeline and read by the indexer.

A shard named ``NAME`` in a shard folder is four files:

- ``NAME.npy``: float32 array of shape (E, D), L2-normalised embeddings, one row per embedded image;
- ``NAME.parquet``: one row per image: uri, sha256, size, mtime, width, height, row, where ``row``
  indexes ``NAME.npy`` or is -1 when the content was already embedded (same sha256 and model);
- ``NAME.failures.parquet``: uri, stage, reason for inputs that failed;
- ``NAME.json``: the manifest (format version, model identity, counts), written **last**.

Every file is written under a temporary name and renamed, and a shard exists only once its
manifest does, so a crash never leaves a half shard that a reader would take. All I/O goes
through Beam's ``FileSystems``, so a shard folder may be local or ``gs://``.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vistag.errors import ShardFormatError

FORMAT_VERSION = 1
META_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("row", pa.int32()),
    ]
)
FAILURE_SCHEMA = pa.schema([("uri", pa.string()), ("stage", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class Shard:
    """A shard read back: ``meta`` rows, ``embeddings`` (E, D) float32, ``failures`` rows, manifest."""

    name: str
    meta: list[dict[str, Any]]
    embeddings: np.ndarray
    failures: list[dict[str, str]]
    manifest: dict[str, Any]


def join(folder: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(folder, name)


def _write_atomic(path: str, payload: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with FileSystems.create(tmp) as fh:
        fh.write(payload)
    FileSystems.rename([tmp], [path])


def _read(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as fh:
        return fh.read()


def _parquet_bytes(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> bytes:
    table = pa.Table.from_pylist(list(rows), schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_shard(
    folder: str,
    meta: Sequence[dict[str, Any]],
    embeddings: np.ndarray,
    failures: Sequence[dict[str, str]],
    model: dict[str, Any],
    name: str | None = None,
) -> str:
    """Write one shard into ``folder`` and return its name. ``embeddings`` is (E, D) float32."""
    from apache_beam.io.filesystems import FileSystems

    name = name or f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1, int(model["embed_dim"]))
    if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
    buf = io.BytesIO()
    np.save(buf, embeddings)
    _write_atomic(join(folder, f"{name}.npy"), buf.getvalue())
    _write_atomic(join(folder, f"{name}.parquet"), _parquet_bytes(meta, META_SCHEMA))
    _write_atomic(join(folder, f"{name}.failures.parquet"), _parquet_bytes(failures, FAILURE_SCHEMA))
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "model": model,
        "images": len(meta),
        "embedded": int(embeddings.shape[0]),
        "failures": len(failures),
        "created": time.time(),
    }
    _write_atomic(join(folder, f"{name}.json"), json.dumps(manifest, indent=1).encode())
    return name


def write_text(path: str, text: str) -> None:
    """Write a small text file atomically on any Beam filesystem."""
    _write_atomic(path, text.encode())


def exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def list_shards(folder: str) -> list[str]:
    """Names of the complete shards in ``folder`` (those whose manifest exists), sorted."""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(folder):
        return []
    pattern = join(folder, "*.json")
    paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    return sorted(os.path.basename(p)[: -len(".json")] for p in paths if ".tmp-" not in p)


def read_manifest(folder: str, name: str) -> dict[str, Any]:
    try:
        manifest = json.loads(_read(join(folder, f"{name}.json")))
    except Exception as err:
        raise ShardFormatError(f"shard {name} in {folder}: unreadable manifest ({err})") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardFormatError(f"shard {name}: unknown format version {manifest.get('format_version')}")
    return manifest


def read_embeddings(folder: str, name: str, mmap: bool = True) -> np.ndarray:
    """The (E, D) float32 embeddings of a shard; memory-mapped when the folder is local."""
    path = join(folder, f"{name}.npy")
    if mmap and "://" not in path and os.path.exists(path):
        return np.load(path, mmap_mode="r")
    return np.load(io.BytesIO(_read(path)))


def read_shard(folder: str, name: str) -> Shard:
    """Read a whole shard and check that its parts agree."""
    manifest = read_manifest(folder, name)
    try:
        meta = pq.read_table(io.BytesIO(_read(join(folder, f"{name}.parquet")))).to_pylist()
        failures = pq.read_table(io.BytesIO(_read(join(folder, f"{name}.failures.parquet")))).to_pylist()
        embeddings = read_embeddings(folder, name)
    except Exception as err:
        raise ShardFormatError(f"shard {name} in {folder}: {err}") from err
    if len(meta) != manifest["images"] or embeddings.shape[0] != manifest["embedded"]:
        raise ShardFormatError(f"shard {name} in {folder}: counts disagree with its manifest")
    return Shard(name, meta, embeddings, failures, manifest)
