"""The work list: files to embed, one JSON line each, cut into chunks by line number.

A chunk is the pipeline's unit of work and of output: the lines ``[first, first + count)`` of the
work list, found by byte range so that a worker reads only its own lines. Chunks are numbered in
file order, so the same work list and chunk size always give the same chunks, and one chunk
always becomes the same shard (see :func:`shard_name`): a retried chunk rewrites its shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.inputs import FileEntry

WORKLIST_FILE = "worklist.jsonl"
DEFAULT_CHUNK_SIZE = 256


@dataclass(frozen=True)
class Chunk:
    """Lines ``[first, first + count)`` of a work list, stored at bytes ``[start, end)``."""

    index: int
    first: int
    count: int
    start: int
    end: int


@dataclass(frozen=True)
class Chunking:
    """The chunks of one work list and the run tag that names their shards."""

    tag: str
    chunks: tuple[Chunk, ...]
    total: int


def write_worklist(folder: str, entries: Sequence[FileEntry]) -> str:
    """Write ``entries`` as ``folder/worklist.jsonl`` (one JSON array per line); returns its path."""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
    path = FileSystems.join(folder, WORKLIST_FILE)
    lines = "".join(json.dumps([e.uri, e.size, e.mtime]) + "\n" for e in entries)
    with FileSystems.create(path) as fh:
        fh.write(lines.encode())
    return path


def parse_worklist_line(line: str) -> FileEntry:
    """One work-list line (``[uri, size, mtime]``) as a :class:`FileEntry`."""
    uri, size, mtime = json.loads(line)
    return FileEntry(uri, int(size), float(mtime))


def cut_chunks(worklist: str, chunk_size: int, salt: str = "") -> Chunking:
    """Cut ``worklist`` into chunks of ``chunk_size`` lines (the last may be shorter).

    The tag is a digest of the work list's bytes, the chunk size and ``salt`` (the model key),
    so two different runs writing into one folder never share a shard name.
    """
    from apache_beam.io.filesystems import FileSystems

    if chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1, not {chunk_size}")
    digest = hashlib.sha256(f"{chunk_size}|{salt}|".encode())
    offsets = [0]  # byte offset of every line start, then the end
    with FileSystems.open(worklist, compression_type="uncompressed") as fh:
        for line in fh:
            digest.update(line)
            if line.strip():
                offsets.append(offsets[-1] + len(line))
            else:
                offsets[-1] += len(line)  # a blank line belongs to no entry
    total = len(offsets) - 1
    chunks = tuple(
        Chunk(
            i, first, min(chunk_size, total - first), offsets[first], offsets[min(first + chunk_size, total)]
        )
        for i, first in enumerate(range(0, total, chunk_size))
    )
    return Chunking(digest.hexdigest()[:12], chunks, total)


def read_chunk(worklist: str, chunk: Chunk) -> list[FileEntry]:
    """The entries of ``chunk``, read from its byte range of ``worklist``."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(worklist, compression_type="uncompressed") as fh:
        fh.seek(chunk.start)
        data = fh.read(chunk.end - chunk.start)
    entries = [parse_worklist_line(line) for line in data.decode().splitlines() if line.strip()]
    if len(entries) != chunk.count:
        raise ValueError(
            f"{worklist}: chunk {chunk.index} holds {len(entries)} entries, expected "
            f"{chunk.count}: the work list changed during the run"
        )
    return entries


def shard_name(tag: str, index: int) -> str:
    """The one shard name of chunk ``index`` in the run tagged ``tag``."""
    return f"shard-{tag}-{index:06d}"
