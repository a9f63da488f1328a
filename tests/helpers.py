"""Helpers several test modules share: a real ``vistag serve`` process on loopback, started on a
copy of a home, waited for on /healthz with a bounded timeout, and always stopped; a catalog
left at an older schema revision; an app on uvicorn in a thread; the shape of an error reply."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devkit.http import Reply, free_port, http_request

START_TIMEOUT_S = 120  # imports torch, FAISS and the model on 2 shared cores
TOKEN = "test-write-token-0123456789"  # a write token for test servers


@dataclass
class Server:
    """A running ``vistag serve`` process: its port, process, home and log file."""

    port: int
    proc: subprocess.Popen
    home: Path
    log: Path

    def get(self, path: str, **headers: str) -> Reply:
        return http_request(self.port, "GET", path, headers=headers)

    def post(self, path: str, body: bytes, content_type: str, **headers: str) -> Reply:
        return http_request(self.port, "POST", path, body, {"Content-Type": content_type, **headers})

    def post_json(self, path: str, data: object, **headers: str) -> Reply:
        return self.post(path, json.dumps(data).encode(), "application/json", **headers)

    def search(self, query: str) -> Any:
        reply = self.get(f"/api/search?{query}")
        assert reply.status == 200, reply.body
        return reply.json()


def serve_command(*args: object) -> list[str]:
    """``vistag serve ARGS`` as a process."""
    return [sys.executable, "-m", "vistag.cli", "serve", *map(str, args)]


@contextlib.contextmanager
def running_server(home: Path, *args: object, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``vistag serve`` on ``home``; yield once /healthz answers; always stop it."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="vistag-serve-", suffix=".log")[1])
    environ = {k: v for k, v in os.environ.items() if k != "VISTAG_WRITE_TOKEN"} | (env or {})
    with open(log, "wb") as out:
        command = serve_command("--home", home, "--port", port, *args)
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ)
    server = Server(port, proc, Path(home), log)
    try:
        _wait_ready(server)
        yield server
    finally:
        stop(server)


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited with {server.proc.returncode}: {server.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            if http_request(server.port, "GET", "/healthz", timeout=2).status == 200:
                return
        time.sleep(0.25)
    pytest.fail(f"server not ready within {START_TIMEOUT_S}s: {server.log.read_text()[-2000:]}")


def stop(server: Server) -> int:
    """Ctrl-C the server (graceful stop); kill it if it does not exit within 20 s. Its exit code."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
    return server.proc.returncode


def copy_home(indexed_home: tuple[Path, object], target: Path) -> Path:
    """Copy the home of ``indexed_home`` (home, corpus) to ``target``; return ``target``."""
    shutil.copytree(indexed_home[0], target)
    return target


def catalog_at_revision(path: Path, revision: str, rows: Iterator[str] | list[str] = ()) -> str:
    """A SQLite catalog at ``path`` migrated only up to ``revision`` (as an older vistag left it),
    with the SQL statements ``rows`` run in it; returns its URL."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from indexer.database import MIGRATIONS

    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        for statement in rows:
            conn.execute(sa.text(statement))
    engine.dispose()
    return url


def assert_error(reply: Reply, *statuses: int) -> str:
    assert reply.status in statuses, (reply.status, reply.body[:300])
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert isinstance(body, dict) and set(body) == {"error"} and body["error"]
    return body["error"]


@contextlib.contextmanager
def thread_server(app: object) -> Iterator[int]:
    """``app`` on uvicorn (the settings ``vistag serve`` uses) in a thread of this process, on a free
    loopback port; yields the port."""
    import uvicorn

    from vistag.http.server import listen, uvicorn_config

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "in-process server did not start"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def search_names(cli: Any, home: Path, photos: Path, *options: object) -> set[str]:
    """The paths, relative to ``photos``, of every hit of a ``vistag search`` with ``options`` (50 at most)."""
    out = cli("search", "a photo", "--home", home, "-k", 50, "--json", *options)
    assert out.code == 0, out.err
    return {str(Path(h["uri"]).relative_to(photos)) for h in out.json()}
