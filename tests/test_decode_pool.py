"""The decode pool: same outcomes as the worker thread, whatever happens to its processes.

Each test compares with :func:`pipeline.entries.decode_entries` on a generated corpus. Pool
processes are killed (one, all, or their fork server) while provably in the middle of a task:
a gated decoder marks ``marks/<pid>`` and then waits for ``marks/go``.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing.forkserver
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.models import ModelIdentity
from pipeline import decode_pool, decode_procs
from pipeline.decode_pool import DecodePool, acquire_pool, release_pool
from pipeline.entries import EntryDecoder, ImageKey, decode_entries
from pipeline.inputs import FileEntry, expand_inputs


class Gated(EntryDecoder):
    """In a pool process: marks ``marks/<pid>`` at each entry, then waits for ``marks/go``."""

    def __init__(self, model: ModelIdentity, marks: Path):
        super().__init__(model)
        self.marks = marks

    def one(self, entry: FileEntry) -> Any:
        (self.marks / str(os.getpid())).touch()
        while not (self.marks / "go").exists():
            time.sleep(0.01)
        return super().one(entry)


class Hanging(EntryDecoder):
    """In a pool process: hangs on entries whose name is ``hang`` (after marking ``marks/<pid>-hang``)."""

    def __init__(self, model: ModelIdentity, marks: Path, hang: str):
        super().__init__(model)
        self.marks, self.hang = marks, hang

    def one(self, entry: FileEntry) -> Any:
        if entry.uri.endswith("/" + self.hang):
            (self.marks / f"{os.getpid()}-hang").touch()
            time.sleep(3600)
        return super().one(entry)


class Crashing(EntryDecoder):
    """In a pool process: dies (as on a segfault) on entries whose name is ``crash``."""

    def __init__(self, model: ModelIdentity, crash: str):
        super().__init__(model)
        self.crash = crash

    def one(self, entry: FileEntry) -> Any:
        if entry.uri.endswith("/" + self.crash):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().one(entry)


class Unready(EntryDecoder):
    """Cannot be set up in a pool process (its model is missing there, say)."""

    def setup(self, known: frozenset[str] | None = None) -> EntryDecoder:
        raise RuntimeError("no model here")


def _decoders(model: str, known_file: str | None = None) -> tuple[EntryDecoder, EntryDecoder]:
    """(the pool's decoder, not set up; the worker thread's, set up) for ``model``."""
    from core.models import load_model, parse_model_spec

    identity = load_model(parse_model_spec(model), "cpu").identity
    return EntryDecoder(identity, known_file), EntryDecoder(identity, known_file).setup()


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: PID 1 here may never reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _marked(marks: Path) -> set[int]:
    return {int(p.name) for p in marks.iterdir() if p.name.isdigit()}


def _assert_same(got: tuple[list, np.ndarray], want: tuple[list, np.ndarray]) -> None:
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


@pytest.fixture
def case(tmp_path, corpus, tiny_model):
    """(entries, model dict, local decoder, what the thread decodes, a marks folder)."""
    entries = expand_inputs([str(corpus.root)]).entries
    config, local = _decoders(tiny_model)
    marks = tmp_path / "marks"
    marks.mkdir()
    return entries, config.identity, local, decode_entries(entries, local), marks


def _decode_while(pool: DecodePool, entries, local, action: Callable[[], None]) -> tuple[list, np.ndarray]:
    """``pool.decode`` in a thread, with ``action`` run meanwhile; its result."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(pool.decode(entries, local)), daemon=True)
    thread.start()
    try:
        action()
    finally:
        thread.join(120)
    assert not thread.is_alive() and result
    return result[0]


def _died_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "decode process died" in r.getMessage()]


def test_decode_pool_gives_what_the_worker_thread_gives(tmp_path, corpus, tiny_model):
    """Same outcomes (failures with reasons, known content, rows) and the same pixels."""
    entries = expand_inputs([str(corpus.root)]).entries
    known = tmp_path / "known.txt"
    known.write_text(hashlib.sha256(corpus.good[1].read_bytes()).hexdigest() + "\n")
    config, local = _decoders(tiny_model, str(known))
    want_outcomes, want = decode_entries(entries, local)
    pool = acquire_pool(config, 2)
    try:
        assert acquire_pool(config, 2) is pool  # one pool per configuration, shared by threads
        release_pool(pool)
        got_outcomes, got = pool.decode(entries, local)
        assert pool.decode([], local)[1].shape == (0, *local.shape)
    finally:
        release_pool(pool)
    assert got_outcomes == want_outcomes
    np.testing.assert_array_equal(got, want)
    assert len(want) == len(corpus.good) - 1  # the known image is not decoded again
    assert sum(isinstance(o, dict) for o in want_outcomes) == len(corpus.bad)
    assert sum(isinstance(o, tuple) and isinstance(o[0], ImageKey) and o[1] < 0 for o in want_outcomes) == 1


@pytest.mark.parametrize("victims", ["one", "all"])
def test_killed_processes_cost_only_their_own_task(case, caplog, victims):
    """Processes SIGKILLed in the middle of a chunk: their tasks (and only theirs) are decoded in the
    thread, the chunk comes out whole, and fresh processes serve the next chunk."""
    entries, model, local, want, marks = case
    pool = DecodePool(Gated(model, marks), 2)
    caplog.set_level("WARNING", logger="pipeline.decode_pool")
    killed: list[int] = []

    def kill() -> None:
        assert _until(lambda: len(_marked(marks)) == 2)  # both processes are inside a task
        killed.extend(sorted(_marked(marks))[: 1 if victims == "one" else 2])
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        assert _until(lambda: not any(_alive(pid) for pid in killed))
        (marks / "go").touch()

    try:
        _assert_same(_decode_while(pool, entries, local, kill), want)
        assert len(_died_warnings(caplog)) == len(killed)  # one task each, not the whole chunk
        assert _until(lambda: len(pool.pids()) == 2) and not set(pool.pids()) & set(killed)  # replaced
        for pid in _marked(marks):
            (marks / str(pid)).unlink()
        _assert_same(pool.decode(entries, local), want)
        assert _marked(marks) and not _marked(marks) & set(killed)  # decoded by the new ones
        assert len(_died_warnings(caplog)) == len(killed)
    finally:
        pool.close()


def test_a_killed_fork_server_is_replaced(case):
    """The fork server SIGKILLed while its processes decode: the chunk comes out whole, its orphaned
    processes are ended, and a new fork server starts the next ones."""
    entries, model, local, want, marks = case
    pool = DecodePool(Gated(model, marks), 2)
    server = 0
    orphans: set[int] = set()

    def kill() -> None:
        nonlocal server
        assert _until(lambda: len(_marked(marks)) == 2)
        orphans.update(_marked(marks))
        server = multiprocessing.forkserver._forkserver._forkserver_pid
        os.kill(server, signal.SIGKILL)
        assert _until(lambda: not any(_alive(pid) for pid in _marked(marks)))  # the orphans are ended
        (marks / "go").touch()

    try:
        _assert_same(_decode_while(pool, entries, local, kill), want)
        assert _until(lambda: len(pool.pids()) == 2) and not set(pool.pids()) & orphans
        assert multiprocessing.forkserver._forkserver._forkserver_pid not in (None, server)
        _assert_same(pool.decode(entries, local), want)
        assert _marked(marks) - orphans  # new processes decoded it
    finally:
        pool.close()


def test_processes_that_cannot_start_leave_decoding_to_the_thread(case, monkeypatch, caplog):
    """No process can be started (here: every start fails): chunks are decoded in the thread, with
    one warning."""
    entries, model, local, want, _ = case

    def refuse(decoder: EntryDecoder) -> None:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(decode_procs, "_spawn", refuse)
    caplog.set_level("WARNING", logger="pipeline.decode_pool")
    pool = DecodePool(EntryDecoder(model), 2)
    try:
        for _ in range(2):
            _assert_same(pool.decode(entries, local), want)
    finally:
        pool.close()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "decode processes cannot start (OSError: [Errno 12] Cannot allocate memory): "
        "decoding in the worker threads instead"
    ]


def test_processes_that_cannot_set_up_leave_decoding_to_the_thread(case, caplog):
    """Processes start but their decoder fails to set up: the same, and the warning says why."""
    entries, model, local, want, _ = case
    caplog.set_level("WARNING", logger="pipeline.decode_pool")
    pool = DecodePool(Unready(model), 2)
    try:
        for _ in range(2):
            _assert_same(pool.decode(entries, local), want)
        assert pool.pids() == []
    finally:
        pool.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot start (RuntimeError: no model here)" in warnings[0]


def test_an_entry_that_hangs_is_a_decode_failure(case, monkeypatch):
    """A task past its deadline: its process is killed, its entries are tried again alone, and the
    one that hangs again is recorded as a decode failure; everything else is as in the thread."""
    entries, model, local, (want_outcomes, want), marks = case
    monkeypatch.setattr(decode_procs, "IMAGE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(decode_pool, "TASK_SIZE", 2)
    pool = DecodePool(Hanging(model, marks, "corrupt.jpg"), 2)
    try:
        got_outcomes, got = pool.decode(entries, local)
        assert _until(lambda: len(pool.pids()) == 2)
        hung = {int(p.name.split("-")[0]) for p in marks.iterdir()}
    finally:
        pool.close()
    bad = _failure_of(want_outcomes, "corrupt.jpg")
    timed_out = {"uri": bad["uri"], "stage": "decode", "reason": "decoding took longer than 1 s"}
    assert got_outcomes == [timed_out if o is bad else o for o in want_outcomes]
    np.testing.assert_array_equal(got, want)
    assert len(hung) == 2 and not any(_alive(pid) for pid in hung)  # in its task, then alone


def test_an_entry_that_crashes_its_process_is_a_decode_failure(case, caplog):
    """A file that kills the decoder (a segfault in a codec): tried again alone, then recorded as a
    failure, while the worker thread (which would die with it) never decodes it."""
    entries, model, local, (want_outcomes, want), _ = case
    pool = DecodePool(Crashing(model, "corrupt.jpg"), 2)
    try:
        got_outcomes, got = pool.decode(entries, local)
    finally:
        pool.close()
    bad = _failure_of(want_outcomes, "corrupt.jpg")
    assert got_outcomes == [
        o if o is not bad else _failure_of(got_outcomes, "corrupt.jpg") for o in want_outcomes
    ]
    crashed = _failure_of(got_outcomes, "corrupt.jpg")
    assert crashed["stage"] == "decode" and crashed["reason"].startswith("the decode process died 3 times")
    np.testing.assert_array_equal(got, want)
    assert len(_died_warnings(caplog)) == 1 + decode_pool.MAX_LOSSES  # in its task, then alone


def _failure_of(outcomes: list, name: str) -> dict:
    (row,) = [o for o in outcomes if isinstance(o, dict) and o["uri"].endswith("/" + name)]
    return row


def test_close_is_bounded_with_stopped_and_blocked_processes(case):
    """One process blocked in a task, the other stopped (SIGSTOP): close() returns within seconds,
    ends both, and the waiting chunk is decoded by its thread."""
    entries, model, local, want, marks = case
    pool = DecodePool(Hanging(model, marks, "corrupt.jpg"), 2)
    pids: list[int] = []

    def stop_and_close() -> None:
        assert _until(lambda: any(marks.iterdir()) and len(pool.pids()) == 2)
        pids.extend(pool.pids())
        (hung,) = [int(p.name.split("-")[0]) for p in marks.iterdir()]
        os.kill(next(pid for pid in pids if pid != hung), signal.SIGSTOP)
        closer = threading.Thread(target=pool.close, daemon=True)
        closer.start()
        closer.join(30)
        assert not closer.is_alive()

    try:
        _assert_same(_decode_while(pool, entries, local, stop_and_close), want)
        assert _until(lambda: not any(_alive(pid) for pid in pids), 10)
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_process_exits_when_its_pipe_closes(case):
    """What a pool process sees when the worker dies: EOF on its pipe. Nothing else holds the
    worker's end (not the fork server, not the other processes), so it exits."""
    _, model, _, _, _ = case
    process, conn = decode_procs._spawn(EntryDecoder(model))
    try:
        assert conn.poll(60) and conn.recv() == ("ready", process.pid)
        conn.close()
        process.join(30)
        assert process.exitcode == 0
    finally:
        if process.exitcode is None:
            process.kill()


@pytest.mark.slow
def test_processes_exit_when_the_worker_is_killed(case):
    """The worker process SIGKILLed: its pool processes and fork server exit on their own."""
    import json
    import subprocess
    import sys

    entries, model, _, _, _ = case
    script = (
        "import json, os, signal, sys\n"
        "from pipeline.decode_pool import DecodePool\n"
        "from pipeline.inputs import FileEntry\n"
        "from pipeline.entries import EntryDecoder\n"
        "if __name__ == '__main__':\n"
        "    model, uris = json.loads(sys.stdin.read())\n"
        "    entries = [FileEntry(u, 0, 0.0) for u in uris]\n"
        "    pool = DecodePool(EntryDecoder(model), 2)\n"
        "    pool.decode(entries, EntryDecoder(model).setup())\n"
        "    import multiprocessing.forkserver as fs\n"
        "    print(json.dumps(pool.pids() + [fs._forkserver._forkserver_pid]), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([model, [e.uri for e in entries]]),
        text=True,
        capture_output=True,
        timeout=240,
        cwd=Path(__file__).parent.parent,
    )
    pids = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == -signal.SIGKILL and len(pids) == 3
    assert _until(lambda: not any(_alive(pid) for pid in pids), 30)


def test_no_room_in_shared_memory_decodes_in_the_worker(monkeypatch, case, caplog):
    """A container's small /dev/shm: the chunk is decoded in the thread, with one warning."""
    entries, model, local, want, _ = case
    pool = DecodePool(EntryDecoder(model), 1)
    monkeypatch.setattr(decode_pool, "shm_free", lambda: 1000)
    caplog.set_level("WARNING", logger="pipeline.decode_pool")
    try:
        for _ in range(2):
            _assert_same(pool.decode(entries, local), want)
    finally:
        pool.close()
    assert sum("shared memory" in r.getMessage() for r in caplog.records) == 1


def test_prewarmed_pool_is_started_before_the_first_chunk_and_closed_after(case):
    entries, model, local, want, _ = case
    config = EntryDecoder(model)
    with decode_pool.prewarmed(config, 2) as pool:
        assert decode_pool.acquire_pool(config, 2) is pool  # what the job's decode step gets
        assert _until(lambda: len(pool.pids()) == 2)  # up with no chunk submitted
        _assert_same(pool.decode(entries, local), want)
        decode_pool.release_pool(pool)
        assert decode_pool._POOLS  # still held by the block
        pids = pool.pids()
    assert not decode_pool._POOLS  # the last user closed it
    assert _until(lambda: not any(_alive(pid) for pid in pids), 10)


def test_index_goes_on_while_decode_processes_are_killed(cli, tmp_path, tiny_model):
    """``vistag index --decode-processes 2`` while a thread SIGKILLs pool processes: every image is
    indexed (before, one kill failed the run with BrokenProcessPool and indexed nothing)."""
    from vistag import synth

    n = 300
    synth.make_corpus(tmp_path / "images", n, seed=3, image_sizes=(40, 56))
    stop = threading.Event()
    killed: list[int] = []

    def killer() -> None:
        # Fewer kills than MAX_LOSSES: more could land thrice on one entry's retry alone (a busy
        # machine starts processes slowly), and that entry would rightly be recorded as failed.
        while not stop.wait(0.2) and len(killed) < decode_pool.MAX_LOSSES - 1:
            for pool in list(decode_pool._POOLS.values()):
                for pid in pool.pids()[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        out = cli(
            "index",
            tmp_path / "images",
            "--home",
            tmp_path / "home",
            "--model",
            tiny_model,
            "--decode-processes",
            "2",
            "--chunk-size",
            "16",
            "--batch-size",
            "16",
        )
    finally:
        stop.set()
        thread.join()
    assert out.code == 0, out.err
    status = cli("status", "--home", tmp_path / "home", "--json").json()
    assert (status["indexed"], status["failed"]) == (n, 0)
    assert len(killed) >= 2
