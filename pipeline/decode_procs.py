"""The processes of a decode pool (see :mod:`pipeline.decode_pool`) and the thread that feeds them.

Each process has its own duplex pipe and shares nothing with the others: no queue, and no lock
that a killed process could leave held (a shared ``ProcessPoolExecutor`` call queue did exactly
that: its other processes and then interpreter exit waited forever). A daemon dispatcher thread
hands :class:`Task` s to idle processes and waits on their pipes and exit sentinels with
:func:`multiprocessing.connection.wait`. Every task's future ends: with its outcomes,
:class:`ProcessLost` (its process died, or its fork server did: the caller decodes it again),
:class:`TimedOut` (past ``IMAGE_TIMEOUT_S`` per entry: its process was killed) or
:class:`Unserved` (the pool closed, or ``START_ATTEMPTS`` starts in a row failed with no process
up). Dead processes are replaced (``forkserver`` starts a new fork server when its own died).
Stopping takes ``3 * STOP_WAIT_S`` at most whatever the processes' state (pipes closed, then
SIGTERM, then SIGKILL), and a process whose parent dies reads EOF on its pipe and exits.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from pipeline.entries import EntryDecoder
from pipeline.inputs import FileEntry

log = logging.getLogger(__name__)
PRELOAD = ["pipeline.decode_procs", "open_clip", "torchvision.transforms"]
IMAGE_TIMEOUT_S = 60.0  # a task's deadline is this times its entries
START_TIMEOUT_S = 180.0  # to start a process and set it up (the first start imports torch in the fork server)
START_ATTEMPTS = 5  # failed starts in a row, with no process up, before giving up
STOP_WAIT_S = 1.0  # per step of stopping: after the pipes close, after SIGTERM, after SIGKILL

# in each pool process: its decoder and the shared-memory buffer it last wrote to
_decoder: EntryDecoder | None = None
_buffers: dict[str, shared_memory.SharedMemory] = {}


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
    pixels = np.ndarray((count, *_decoder.shape), np.uint8, buffer=_attach(name).buf)
    out = decode_into(_decoder, pixels, first, entries)
    del pixels  # no view may outlive the task: the buffer closes when the next chunk's arrives
    return out


def decode_into(
    decoder: EntryDecoder, pixels: np.ndarray, first: int, entries: Sequence[FileEntry]
) -> list[Any]:
    """Decode ``entries`` with ``decoder`` into ``pixels[first:]``; per entry a failure row, a key
    (already embedded), (key, slot) or (key, Encoded) (left for the GPU, see pipeline.gpu_decode)."""
    out: list[Any] = []
    for slot, entry in enumerate(entries, start=first):
        outcome = decoder.one(entry)
        if isinstance(outcome, tuple) and isinstance(outcome[1], np.ndarray):
            key, arr = outcome
            pixels[slot] = arr
            out.append((key, slot))
        else:  # a failure row, a key, or a key and its Encoded bytes
            out.append(outcome)
    return out


def _serve(conn: Connection, decoder: EntryDecoder) -> None:
    """A pool process: set ``decoder`` up, say ("ready", pid), then answer each task with ("done",
    outcomes) or ("error", reason) until the pipe closes (the pool closed it, or the parent died)."""
    global _decoder
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it closes the pipe
    with contextlib.suppress(EOFError, OSError):
        try:
            _decoder = decoder.setup()
        except Exception as err:  # reported, so that the pool can say why it decodes in the threads
            conn.send(("failed", f"{type(err).__name__}: {err}"))
            return
        conn.send(("ready", os.getpid()))
        while (task := conn.recv()) is not None:
            try:
                reply: tuple[str, Any] = ("done", _decode_task(*task))
            except Exception as err:
                reply = ("error", f"{type(err).__name__}: {err}")
            conn.send(reply)


def _spawn(decoder: EntryDecoder) -> tuple[BaseProcess, Connection]:
    """Start one pool process serving ``decoder``; returns it and the parent's end of its pipe."""
    context = multiprocessing.get_context("forkserver")
    # import Beam, torch and OpenCLIP once in the fork server rather than in every process
    # (16 processes importing them at once took longer than decoding 10,000 images)
    context.set_forkserver_preload(PRELOAD)
    here, there = context.Pipe(duplex=True)
    process = context.Process(target=_serve, args=(there, decoder), name="vistag-decode", daemon=True)
    try:
        process.start()
    except BaseException:
        here.close()
        raise
    finally:
        there.close()  # the child has its copy: with ours closed, its death reads as EOF here
    return process, here


def _wait_all(processes: Sequence[BaseProcess], timeout: float) -> list[BaseProcess]:
    """Wait at most ``timeout`` s for ``processes`` to end; returns those still running."""
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if p.exitcode is None]
    while alive and (left := deadline - time.monotonic()) > 0:
        wait([p.sentinel for p in alive], left)
        alive = [p for p in alive if p.exitcode is None]
    return alive


def _stop(processes: Sequence[BaseProcess]) -> None:
    """End ``processes`` (their pipes already closed) in bounded time: wait, SIGTERM, wait, SIGKILL."""
    alive = _wait_all(processes, STOP_WAIT_S)
    for action in ("terminate", "kill"):
        for process in alive:
            with contextlib.suppress(OSError):
                getattr(process, action)()
        alive = _wait_all(alive, STOP_WAIT_S)
    for process in alive:  # not even SIGKILL reported (its fork server stopped?): never join it at exit
        log.warning("decode process %s did not stop; leaving it", process.pid)
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]


def _send(conn: Connection, message: Any) -> bool:
    try:
        conn.send(message)
    except OSError:  # the process died (its sentinel may not have fired yet), or the pool closed
        return False
    return True


def _recv(conn: Connection) -> Any:
    """The next message on ``conn``; None when the process died or the pool closed."""
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


class Unserved(Exception):
    """No process decoded the task (the pool closed, or no process can start): decode it here."""


class ProcessLost(Unserved):
    """The task's process died: decode it here."""


class TimedOut(Exception):
    """The task ran past its deadline and its process was killed."""


@dataclass(eq=False)
class Task:
    """Entries to decode into one chunk buffer, and the future of their outcomes."""

    first: int  # slot of its first entry in the chunk buffer
    part: Sequence[FileEntry]
    message: tuple[Any, ...]  # the arguments of _decode_task
    future: Future[list[Any]] = field(default_factory=Future)

    def finish(self, outcomes: list[Any]) -> None:
        if not self.future.done():
            self.future.set_result(outcomes)

    def fail(self, err: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(err)


@dataclass(eq=False)
class _Proc:
    process: BaseProcess
    conn: Connection
    deadline: float  # to be ready (while starting) or to finish its task; inf when idle
    ready: bool = False
    task: Task | None = None


class Dispatcher:
    """The processes of a pool and the daemon thread that hands them tasks. Every submitted task's
    future ends: with the outcomes, :class:`ProcessLost`, :class:`Unserved` or :class:`TimedOut`."""

    def __init__(self, decoder: EntryDecoder, processes: int, warn: Callable[[str], None]):
        self._decoder = decoder
        self._processes = processes
        self._warn = warn
        self._lock = threading.Lock()
        self._queue: deque[Task] = deque()
        self._procs: list[_Proc] = []
        self._starters: dict[int, float] = {}  # starts under way: id -> deadline
        self._ids = itertools.count()
        self._dead: list[BaseProcess] = []  # dropped, maybe not yet reaped
        self._failures = 0  # failed starts since a process last came up
        self._next_start = 0.0
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.usable = True
        self.closing = False

    def submit(self, task: Task) -> None:
        with self._lock:
            if self.closing or not self.usable:
                task.fail(Unserved("the pool is closed or has no processes"))
                return
            self._queue.append(task)
            self._start_thread()
        self._wake()

    def start(self) -> None:
        """Start the processes now (they start on the first task otherwise)."""
        with self._lock:
            if not self.closing and self.usable:
                self._start_thread()

    def pids(self) -> list[int]:
        with self._lock:
            return [p.process.pid for p in self._procs if p.ready and p.process.pid is not None]

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="vistag-decode-dispatch", daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            os.write(self._wake_w, b"x")

    def _loop(self) -> None:
        try:
            while self._step():
                pass
        except Exception as err:  # a bug here must not leave callers waiting: they decode instead
            log.exception("decode pool dispatcher failed")
            with self._lock:
                self._give_up(f"its dispatcher failed: {err}")

    def _step(self) -> bool:
        """One round: start processes, hand out tasks, wait, take replies. False once closing.
        Pipes are read and written outside the lock, so a stopped process cannot block ``close``."""
        with self._lock:
            if self.closing or not self.usable:
                return False
            self._refill()
            sends = self._assign()
            procs, objects, timeout = self._waits()
        unsent = [(proc, task) for proc, task in sends if not _send(proc.conn, task.message)]
        ready = wait(objects, 0 if unsent else timeout)
        replies = {proc: _recv(proc.conn) for proc in procs if proc.conn in ready}
        with self._lock:
            if self.closing:
                return False
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            for proc, task in unsent:
                if proc in self._procs and proc.task is task:  # never delivered: someone else's
                    proc.task = None
                    self._queue.appendleft(task)
                    self._drop(proc, "its pipe closed")
            for proc, reply in replies.items():
                if proc in self._procs:
                    self._receive(proc, reply)
            for proc in procs:
                if proc.process.sentinel in ready and proc in self._procs:
                    self._drop(proc, f"exit code {proc.process.exitcode}")
            self._expire()
        return True

    def _waits(self) -> tuple[list[_Proc], list[Any], float | None]:
        procs = list(self._procs)
        objects: list[Any] = [self._wake_r]
        deadlines = [*self._starters.values(), *(p.deadline for p in procs)]
        for proc in procs:
            objects += [proc.conn, proc.process.sentinel]
        if len(procs) + len(self._starters) < self._processes:
            deadlines.append(self._next_start)
        soonest = min(deadlines, default=math.inf)
        return procs, objects, None if soonest == math.inf else max(0.0, soonest - time.monotonic())

    def _receive(self, proc: _Proc, reply: tuple[str, Any] | None) -> None:
        if reply is None:
            self._drop(proc, "its pipe closed")
            return
        kind, value = reply
        if kind == "ready":
            proc.ready, proc.deadline, self._failures = True, math.inf, 0
        elif kind == "failed":
            self._drop(proc, value)
        elif proc.task is not None:
            task, proc.task, proc.deadline = proc.task, None, math.inf
            if kind == "done":
                task.finish(value)
            else:
                task.fail(ProcessLost(value))

    def _drop(self, proc: _Proc, why: str) -> None:
        """Forget a process that died (or is to die): its task is lost, a failed start counted."""
        self._procs.remove(proc)
        proc.conn.close()
        if proc.task is not None:
            proc.task.fail(ProcessLost(why))
        elif not proc.ready:
            self._start_failed(why)
        if proc.process.exitcode == 255 and proc.process.pid:  # its fork server died: it may live on
            with contextlib.suppress(OSError):
                os.kill(proc.process.pid, signal.SIGKILL)
        self._dead.append(proc.process)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid, deadline in list(self._starters.items()):
            if now >= deadline:
                del self._starters[sid]
                self._start_failed(f"no process started in {START_TIMEOUT_S:g} s")
        for proc in list(self._procs):
            if now >= proc.deadline:
                with contextlib.suppress(OSError):
                    proc.process.kill()
                if proc.task is not None:
                    proc.task.fail(TimedOut())
                    proc.task = None
                self._drop(proc, f"not up in {START_TIMEOUT_S:g} s" if not proc.ready else "out of time")

    def _assign(self) -> list[tuple[_Proc, Task]]:
        """Queued tasks matched with idle processes (to be sent outside the lock)."""
        idle = [p for p in self._procs if p.ready and p.task is None]
        sends = []
        while self._queue and idle:
            proc, task = idle.pop(), self._queue.popleft()
            proc.task, proc.deadline = task, time.monotonic() + len(task.part) * IMAGE_TIMEOUT_S
            sends.append((proc, task))
        return sends

    def _refill(self) -> None:
        """Start processes for empty places (each in a thread: a start can block for long)."""
        self._dead = [p for p in self._dead if p.exitcode is None]
        now = time.monotonic()
        if now < self._next_start:
            return
        for _ in range(self._processes - len(self._procs) - len(self._starters)):
            sid = next(self._ids)
            self._starters[sid] = now + START_TIMEOUT_S
            threading.Thread(
                target=self._start_one, args=(sid,), name="vistag-decode-start", daemon=True
            ).start()

    def _start_one(self, sid: int) -> None:
        try:
            process, conn = _spawn(self._decoder)
        except Exception as err:
            with self._lock:
                if self._starters.pop(sid, None) is not None:
                    self._start_failed(f"{type(err).__name__}: {err}")
            self._wake()
            return
        with self._lock:
            deadline = self._starters.pop(sid, None)
            keep = deadline is not None and not self.closing and self.usable
            if keep:
                self._procs.append(_Proc(process, conn, deadline))
        if not keep:  # it took too long, or the pool closed meanwhile
            conn.close()
            _stop([process])
        self._wake()

    def _start_failed(self, why: str) -> None:
        self._failures += 1
        if self._failures >= START_ATTEMPTS and not any(p.ready for p in self._procs):
            self._give_up(f"decode processes cannot start ({why})")
        else:
            self._next_start = time.monotonic() + min(30.0, 0.1 * 2**self._failures)

    def _give_up(self, why: str) -> None:
        if self.usable:
            self.usable = False
            self._warn(f"{why}: decoding in the worker threads instead")
        for task in [*self._queue, *(p.task for p in self._procs if p.task is not None)]:
            task.fail(Unserved(why))
        self._queue.clear()

    def close(self) -> None:
        """Fail what is pending, close every pipe, and stop every process in bounded time."""
        with self._lock:
            self.closing = True
            procs, self._procs = self._procs, []
            dead, self._dead = self._dead, []
            for task in [*self._queue, *(p.task for p in procs if p.task is not None)]:
                task.fail(Unserved("the pool closed"))
            self._queue.clear()
            self._starters.clear()
        self._wake()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
        for proc in procs:
            proc.conn.close()
        _stop([p.process for p in procs] + dead)
        if self._thread is None or not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1
