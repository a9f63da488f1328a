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
Pool processes start with ``forkserver`` (never ``fork``: the worker holds CUDA and threads). A
pool process that dies (killed for memory, say) fails only the tasks in flight: they are decoded
again in the worker's own thread and the pool is replaced.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from pipeline.inputs import FileEntry
from pipeline.stages import EntryDecoder, ImageKey, Outcome, decode_entries

log = logging.getLogger(__name__)
PRELOAD = ["pipeline.stages", "open_clip", "torchvision.transforms"]
SHM_DIR = "/dev/shm"
TASK_SIZE = 16  # entries per task: enough to amortise the round trip, small enough to balance

_POOLS: dict[tuple[Any, ...], DecodePool] = {}
_POOLS_LOCK = threading.Lock()

# in each pool process: its decoder and the shared-memory buffer it last wrote to
_decoder: EntryDecoder | None = None
_buffers: dict[str, shared_memory.SharedMemory] = {}


def _init(decoder: EntryDecoder) -> None:
    global _decoder
    _decoder = decoder.setup()


def _attach(name: str) -> shared_memory.SharedMemory:
    """The chunk buffer ``name``, attached once; the creator alone unlinks it."""
    if name not in _buffers:
        for old in list(_buffers):
            _buffers.pop(old).close()
        try:
            _buffers[name] = shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
        except TypeError:  # older: registered with the creator's resource tracker, which forkserver
            _buffers[name] = shared_memory.SharedMemory(name=name)  # children share; a set, so no harm
    return _buffers[name]


def _decode_task(name: str, first: int, count: int, entries: Sequence[FileEntry]) -> list[Any]:
    """Decode ``entries`` into slots ``first``... of the chunk buffer ``name``; per entry a failure
    row, a key (already embedded) or (key, slot)."""
    assert _decoder is not None
    shape = _decoder.shape
    pixels = np.ndarray((count, *shape), np.uint8, buffer=_attach(name).buf)
    out: list[Any] = []
    for slot, entry in enumerate(entries, start=first):
        outcome = _decoder.one(entry)
        if isinstance(outcome, tuple):
            key, arr = outcome
            pixels[slot] = arr
            out.append((key, slot))
        else:
            out.append(outcome)
    del pixels  # no view may outlive the task: the buffer closes when the next chunk's arrives
    return out


class DecodePool:
    """``processes`` decode processes for one decoder configuration, shared by a worker's threads."""

    def __init__(self, decoder: EntryDecoder, processes: int):
        self._decoder = decoder
        self.processes = processes
        self.users = 0
        self._lock = threading.Lock()
        self._warned = False
        self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        # import Beam, torch and OpenCLIP once in the fork server rather than in every process
        # (16 processes importing them at once took longer than decoding 10,000 images)
        context.set_forkserver_preload(PRELOAD)
        return ProcessPoolExecutor(self.processes, mp_context=context, initializer=_init, initargs=(self._decoder,))

    def decode(self, entries: Sequence[FileEntry], local: EntryDecoder) -> tuple[list[Outcome], np.ndarray]:
        """Like :func:`pipeline.stages.decode_entries`, with the work spread over the pool."""
        if not entries:
            return [], np.zeros((0, *local.shape), np.uint8)
        shape = local.shape
        size = len(entries) * int(np.prod(shape))
        if shm_free() < 2 * size:  # writing past a full tmpfs kills the writer (SIGBUS): never try
            self._warn_once(f"shared memory ({SHM_DIR}) has less than {2 * size >> 20} MiB free: decoding in "
                            "the worker thread instead (a container needs e.g. docker run --shm-size=2g)")  # fmt: skip
            return decode_entries(entries, local)
        buffer = shared_memory.SharedMemory(create=True, size=size)
        try:
            with self._lock:
                executor = self._executor
            tasks: list[tuple[int, Sequence[FileEntry], Future[list[Any]]]] = []
            for first in range(0, len(entries), TASK_SIZE):
                part = entries[first : first + TASK_SIZE]
                tasks.append((first, part, executor.submit(_decode_task, buffer.name, first, len(entries), part)))
            outcomes: list[Any] = []
            for first, part, future in tasks:
                try:
                    outcomes.extend(future.result())
                except BrokenProcessPool:
                    outcomes.extend(self._decode_here(part, first, buffer, local))
                    self._replace(executor)
            pixels = np.ndarray((len(entries), *shape), np.uint8, buffer=buffer.buf)
            slots = [o[1] for o in outcomes if isinstance(o, tuple)]
            batch = pixels[slots].copy() if slots else np.zeros((0, *shape), np.uint8)
            del pixels
        finally:
            buffer.close()
            buffer.unlink()
        result: list[Outcome] = []
        row = 0
        for outcome in outcomes:
            if isinstance(outcome, ImageKey):
                result.append((outcome, -1))
            elif isinstance(outcome, tuple):
                result.append((outcome[0], row))
                row += 1
            else:
                result.append(outcome)
        return result, batch

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)

    def _decode_here(
        self, part: Sequence[FileEntry], first: int, buffer: shared_memory.SharedMemory, local: EntryDecoder
    ) -> list[Any]:  # fmt: skip
        """A task whose process died, decoded again in this thread into the same slots."""
        log.warning("a decode process died; decoding %d images in the worker instead", len(part))
        outcomes, batch = decode_entries(part, local)
        pixels = np.ndarray((first + len(part), *local.shape), np.uint8, buffer=buffer.buf)
        out: list[Any] = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, dict):
                out.append(outcome)
            elif outcome[1] < 0:
                out.append(outcome[0])
            else:
                pixels[first + i] = batch[outcome[1]]
                out.append((outcome[0], first + i))
        del pixels
        return out

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self._executor = self._start()

    def prewarm(self) -> threading.Thread:
        """Start the fork server and every process in a background thread, so their imports and
        set-up overlap the runner's start and the model's load instead of delaying the first chunk."""

        def start() -> None:
            with self._lock:
                executor = self._executor
            try:
                for future in [executor.submit(_ready) for _ in range(self.processes)]:
                    future.result()
            except Exception as err:  # noqa: BLE001 - closed or broken meanwhile: the run handles it
                log.debug("decode pool prewarm stopped: %s", err)

        thread = threading.Thread(target=start, name="vistag-decode-prewarm", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        with self._lock:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _ready() -> int:
    return os.getpid()


def shm_free() -> int:
    """Bytes free in the filesystem behind POSIX shared memory (``/dev/shm`` on Linux)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 1 << 62  # no such folder (not Linux): the system decides
    return st.f_bavail * st.f_frsize


def _key(decoder: EntryDecoder, processes: int) -> tuple[Any, ...]:
    return (str(decoder.model.get("key")), decoder.known_hashes_file, decoder.max_pixels, processes)


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
