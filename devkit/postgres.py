"""A throwaway PostgreSQL server on loopback for tests and benchmarks (Debian's postgresql binaries).

As root the server runs as the ``postgres`` user (PostgreSQL refuses root) in a directory that
user owns; as anyone else it runs as that user. Listens on 127.0.0.1 on a free port only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devkit.http import free_port


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available() -> bool:
    return all(_bin(n) for n in ("initdb", "pg_ctl")) and _psycopg()


def _psycopg() -> bool:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False
    return True


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh database ``vistag`` on a private server; stop it after."""
    root = Path(tempfile.mkdtemp(prefix="vistag-pg-"))
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run(
        _as_owner([_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"]), **run
    )
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
    subprocess.run(
        _as_owner([_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]),
        **run,
    )
    try:
        _create_database(port)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/vistag"
    finally:
        subprocess.run(
            _as_owner([_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def _create_database(port: int) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
            ) as conn:
                conn.execute("CREATE DATABASE vistag")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def fresh_database(base_url: str) -> str:
    """Create a new empty database on the server of ``base_url``; return its URL."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return base_url.rsplit("/", 1)[0] + f"/{name}"
