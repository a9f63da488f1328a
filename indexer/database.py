"""The catalog's database: URLs, engines, the schema's migrations and bulk inserts, for any
SQLAlchemy backend (SQLite file by default, ``postgresql+psycopg://`` at scale)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from core.errors import CatalogError, InputError, LockHeld
from indexer.schema import HEAD_REVISION

CHUNK = 500
COPY_MIN = 100  # rows from which PostgreSQL inserts go through COPY (see insert_many)
WRITER_LOCK_KEY = 0x76697374  # "vist": the advisory lock id of vistag's one writer
_MIGRATION_LOCK = threading.Lock()
MIGRATIONS = Path(__file__).parent / "migrations"


def parse_db_url(url: str) -> sa.URL:
    """Parse a SQLAlchemy database URL; raise :class:`InputError` when it is not one."""
    try:
        parsed = make_url(url)
    except Exception as err:
        raise InputError(f"not a database URL: {url!r} ({err})") from err
    return parsed


BUSY_TIMEOUT_S = 30.0  # how long a SQLite write waits for another writer's transaction


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Turn SQLite's "database is locked" (another process held its write transaction for longer
    than ``BUSY_TIMEOUT_S``) into :class:`LockHeld`, naming ``what`` could not be written."""
    try:
        yield
    except sa.exc.OperationalError as err:
        if "locked" not in str(err.orig).lower():
            raise
        raise LockHeld(
            f"cannot write {what}: the catalog is busy (another vistag run has been writing to it for "
            f"over {BUSY_TIMEOUT_S:.0f} s); try again when it ends"
        ) from None


def engine(url: str) -> Engine:
    parsed = parse_db_url(url)
    try:
        engine = sa.create_engine(parsed, future=True, pool_pre_ping=True)
    except ModuleNotFoundError as err:
        raise CatalogError(
            f"no driver for {parsed.drivername}: {err} (pip install 'vistag[postgres]')"
        ) from err
    if parsed.get_backend_name() == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def text_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def insert_many(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` in ``conn``'s transaction. On PostgreSQL through psycopg,
    batches of ``COPY_MIN`` rows or more go through ``COPY ... FROM STDIN`` (one stream instead of
    INSERT statements); its errors surface as SQLAlchemy's (``IntegrityError``...), as an INSERT's
    would. Rows are grouped by their columns, so columns a row leaves out keep their defaults."""
    if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg" or len(rows) < COPY_MIN:
        conn.execute(table.insert(), list(rows))
        return
    import psycopg

    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    quote = conn.dialect.identifier_preparer.quote
    raw = conn.connection.driver_connection
    for columns, group in groups.items():
        statement = f"COPY {quote(table.name)} ({', '.join(quote(c) for c in columns)}) FROM STDIN"
        try:
            with raw.cursor() as cur, cur.copy(statement) as copy:
                for row in group:
                    copy.write_row([row[c] for c in columns])
        except psycopg.Error as err:
            raise sa.exc.DBAPIError.instance(
                statement, None, err, psycopg.Error, dialect=conn.dialect
            ) from err


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision. A catalog already there is recognised by one query,
    without importing Alembic (a read command's start-up); upgrades go through Alembic, serialised
    in-process (its environment is process-global) and across processes on PostgreSQL by an
    advisory lock."""
    with engine.connect() as conn:
        try:
            current = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
        except sa.exc.DBAPIError:  # no table yet: a new catalog
            conn.rollback()
            current = []
    if current == [HEAD_REVISION]:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _MIGRATION_LOCK, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITER_LOCK_KEY + 1})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
