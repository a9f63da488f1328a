"""Decoding in worker processes, for a worker that feeds a GPU.

Python threads do not decode JPEGs in parallel well enough to feed a GPU: measured on a 16-core
H100 host, 16 threads decoded 3.8 times what one does, while a ViT-B/32 forward takes 25,000
images/s. So a worker that owns the GPU model can hand its chunks' entries to a pool of decode
processes: each reads, hashes, decodes and preprocesses its share and writes the (3, H, W) uint8
pixels straight into a shared-memory buffer of the chunk, so only small metadata crosses process
boundaries. The worker's threads share one pool (one per decoder configuration and process), and
the one model copy stays in the worker.

Each chunk's buffer is checked against the free space of ``/dev/shm`` first (containers often
give it 64 MiB): without room for it the chunk is decoded in the worker's thread, with a warning.
Pool processes start with ``forkserver`` (never ``fork``: the worker holds CUDA and threads).

The processes (see :mod:`pipeline.decode_procs`) each have their own pipe. One that dies costs
only its task, whose entries are decoded again one by one in processes (so a file that crashes
the decoder never takes the worker down: after ``MAX_LOSSES`` deaths on it alone it is recorded as
a ``decode`` failure), and is replaced; a task that runs out of time is tried again entry by entry,
and an entry that still does is recorded as a ``decode`` failure. When no process can start,
chunks are decoded in the callers' threads (one warning).
Closing takes a few seconds at most, whatever state the processes are in.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from pipeline import decode_procs
from pipeline.decode_procs import Dispatcher, ProcessLost, Task, TimedOut, Unserved, decode_into
from pipeline.entries import EntryDecoder, Outcome, Pixels, decode_entries, number, with_encoded
from pipeline.inputs import FileEntry

log = logging.getLogger(__name__)
SHM_DIR = "/dev/shm"
TASK_SIZE = 16  # entries per task: enough to amortise the round trip, small enough to balance
MAX_LOSSES = 3  # deaths of the decode process on one entry alone before it is a failure

_POOLS: dict[tuple[Any, ...], DecodePool] = {}
_POOLS_LOCK = threading.Lock()
_OPEN: set[DecodePool] = set()  # closed at interpreter exit if nobody did
_OPEN_LOCK = threading.Lock()


class DecodePool:
    """``processes`` decode processes for one decoder configuration, shared by a worker's threads."""

    def __init__(self, decoder: EntryDecoder, processes: int):
        self.users = 0
        self._warned: set[str] = set()
        self._dispatcher = Dispatcher(decoder, processes, lambda message: self._warn_once("start", message))
        _opened(self)

    def decode(self, entries: Sequence[FileEntry], local: EntryDecoder) -> tuple[list[Outcome], Pixels]:
        """Like :func:`pipeline.entries.decode_entries`, with the work spread over the pool."""
        if not entries:
            return [], np.zeros((0, *local.shape), np.uint8)
        if not self._dispatcher.usable:
            return decode_entries(entries, local)
        shape = local.shape
        size = len(entries) * int(np.prod(shape))
        if shm_free() < 2 * size:  # writing past a full tmpfs kills the writer (SIGBUS): never try
            self._warn_once(
                "shm",
                f"shared memory ({SHM_DIR}) has less than {2 * size >> 20} MiB free: decoding in "
                "the worker thread instead (a container needs e.g. docker run --shm-size=2g)",
            )
            return decode_entries(entries, local)
        buffer = shared_memory.SharedMemory(create=True, size=size)
        try:
            tasks = [
                self._submit(buffer, first, entries[first : first + TASK_SIZE], len(entries))
                for first in range(0, len(entries), TASK_SIZE)
            ]
            outcomes, slots, encoded = number(
                [o for task in tasks for o in self._collect(task, buffer, local, len(entries))]
            )
            pixels = np.ndarray((len(entries), *shape), np.uint8, buffer=buffer.buf)
            batch = pixels[slots].copy() if slots else np.zeros((0, *shape), np.uint8)
            del pixels
        finally:
            buffer.close()
            buffer.unlink()
        return outcomes, with_encoded(batch, encoded)

    def _submit(
        self, buffer: shared_memory.SharedMemory, first: int, part: Sequence[FileEntry], count: int
    ) -> Task:
        task = Task(first, part, (buffer.name, first, count, part))
        self._dispatcher.submit(task)
        return task

    def _collect(
        self, task: Task, buffer: shared_memory.SharedMemory, local: EntryDecoder, count: int, losses: int = 0
    ) -> list[Any]:
        """``task``'s outcomes: from its process; after a death or a timeout, each entry again alone
        in a process (an entry that crashes or hangs its decoder must not do so to the worker);
        an entry that still does is a ``decode`` failure; when no process serves, decoded here."""
        try:
            return task.future.result()
        except TimedOut:
            if len(task.part) > 1:
                return self._alone(task, buffer, local, count, 0)
            reason = f"decoding took longer than {decode_procs.IMAGE_TIMEOUT_S:g} s"
            return [{"uri": task.part[0].uri, "stage": "decode", "reason": reason}]
        except ProcessLost as err:
            log.warning("a decode process died (%s); decoding its %d images again", err, len(task.part))
            if len(task.part) > 1:
                return self._alone(task, buffer, local, count, 0)
            if losses + 1 < MAX_LOSSES:
                return self._alone(task, buffer, local, count, losses + 1)
            reason = f"the decode process died {MAX_LOSSES} times on this file ({err})"
            return [{"uri": task.part[0].uri, "stage": "decode", "reason": reason}]
        except Unserved:
            return self._decode_here(task.part, task.first, buffer, local)

    def _alone(
        self, task: Task, buffer: shared_memory.SharedMemory, local: EntryDecoder, count: int, losses: int
    ) -> list[Any]:
        """Each entry of ``task`` again, alone, in a process."""
        alone = [self._submit(buffer, task.first + i, [entry], count) for i, entry in enumerate(task.part)]
        return [o for t in alone for o in self._collect(t, buffer, local, count, losses)]

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message)

    def _decode_here(
        self, part: Sequence[FileEntry], first: int, buffer: shared_memory.SharedMemory, local: EntryDecoder
    ) -> list[Any]:
        """A task no process decoded, decoded in this thread into the same slots."""
        pixels = np.ndarray((first + len(part), *local.shape), np.uint8, buffer=buffer.buf)
        out = decode_into(local, pixels, first, part)
        del pixels
        return out

    def prewarm(self) -> None:
        """Start the fork server and every process now, in the background, so that their imports and
        set-up overlap the runner's start and the model's load instead of delaying the first chunk."""
        self._dispatcher.start()

    def pids(self) -> list[int]:
        """Process ids of the pool's processes that are up."""
        return self._dispatcher.pids()

    def close(self) -> None:
        """Stop the processes (a few seconds at most, whatever their state); pending tasks are
        decoded by their callers."""
        with _OPEN_LOCK:
            _OPEN.discard(self)
        self._dispatcher.close()


def _opened(pool: DecodePool) -> None:
    with _OPEN_LOCK:
        if not _OPEN:
            atexit.unregister(_close_open)
            atexit.register(_close_open)  # after multiprocessing's hook, so it runs before it
        _OPEN.add(pool)


def _close_open() -> None:
    """At interpreter exit: close the pools nobody closed (multiprocessing would join their processes
    with no time limit)."""
    with _OPEN_LOCK:
        pools = list(_OPEN)
    for pool in pools:
        pool.close()


def shm_free() -> int:
    """Bytes free in the filesystem behind POSIX shared memory (``/dev/shm`` on Linux)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 1 << 62  # no such folder (not Linux): the system decides
    return st.f_bavail * st.f_frsize


def _key(decoder: EntryDecoder, processes: int) -> tuple[Any, ...]:
    return (
        decoder.identity.key,
        decoder.known_hashes_file,
        decoder.max_pixels,
        decoder.defer_jpeg,
        processes,
    )


def acquire_pool(decoder: EntryDecoder, processes: int) -> DecodePool:
    """The pool for ``decoder``'s configuration in this process, started on first use."""
    with _POOLS_LOCK:
        key = _key(decoder, processes)
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = DecodePool(decoder, processes)
        pool.users += 1
        return pool


def release_pool(pool: DecodePool) -> None:
    """Drop one user of ``pool``; the last one stops its processes."""
    with _POOLS_LOCK:
        pool.users -= 1
        if pool.users > 0:
            return
        for key, value in list(_POOLS.items()):
            if value is pool:
                del _POOLS[key]
    pool.close()


@contextlib.contextmanager
def prewarmed(decoder: EntryDecoder, processes: int) -> Iterator[DecodePool]:
    """Hold ``decoder``'s pool for the block, started at once in the background (see
    :meth:`DecodePool.prewarm`): an in-process run's decode steps then find it ready."""
    pool = acquire_pool(decoder, processes)
    pool.prewarm()
    try:
        yield pool
    finally:
        release_pool(pool)
