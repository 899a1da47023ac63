"""Engines for the store: SQLite tuned for many writer processes, PostgreSQL as is.

SQLite has no row locks, so every write transaction starts with ``BEGIN IMMEDIATE``
(the write lock is taken up front instead of failing on upgrade), in WAL mode with a
busy timeout. Read-only work opts out with the ``gz_read`` execution option.

Engines are per process: after ``fork`` a child never reuses its parent's
connections (``os.register_at_fork`` disposes the inherited pools without closing
the parent's sockets), which is what Celery's prefork pool needs.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from gleitzeit.errors import ConfigurationError

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: first and longest pause, in seconds, between tries to take SQLite's write lock
SQLITE_WRITE_LOCK_PAUSES = (0.0001, 0.002)
#: page cache per connection, in KiB (SQLite's default, 2 MiB, holds a few thousand tasks)
SQLITE_CACHE_KIB = 32 * 1024

#: seconds a PostgreSQL connection may take to open, unless the URL says (connect_timeout=)
PG_CONNECT_TIMEOUT = 10

_engines: dict[tuple[int, str], Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file_missing(url: str) -> str | None:
    """The path of the SQLite file ``url`` names when it is not there, else ``None``
    (opening it would make an empty one: a health check or a scrape must not)."""
    if not is_sqlite(url):
        return None
    database = make_url(url).database
    if database and database != ":memory:" and not os.path.isfile(database):
        return database
    return None


def masked_url(url: str) -> str:
    """``url`` fit to print: its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r":[^:@/]*@", ":***@", url)


def _bad_url(url: str, exc: Exception) -> ConfigurationError:
    """What is wrong with a database URL SQLAlchemy refused, and what one looks like."""
    shown = masked_url(url)
    if isinstance(exc, NoSuchModuleError):
        scheme = shown.partition("://")[0]
        why = f"no database is known by {scheme!r}"
    elif "://" not in url:
        path = os.path.abspath(url)
        why = f"it is not a URL (for a SQLite file there: sqlite:///{path})"
    else:
        why = "it cannot be parsed"
    return ConfigurationError(
        f"database URL {shown!r} (GLEITZEIT_DATABASE_URL or --database): {why}; gleitzeit "
        "takes sqlite:///path/to/file.db or postgresql://user:password@host/database"
    )


def _missing_driver(url: str, exc: ImportError) -> ConfigurationError:
    shown = masked_url(url)
    if make_url(url).get_backend_name() == "postgresql":
        return ConfigurationError(
            f"the store at {shown} is PostgreSQL, whose driver (psycopg 3) is not installed: "
            "pip install 'gleitzeit[postgres]'"
        )
    return ConfigurationError(
        f"the store at {shown} needs a database driver that is not installed: {exc}"
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # let SQLAlchemy's begin event, not the driver, start transactions
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("gz_read", False):
            conn.exec_driver_sql("BEGIN")
        else:
            begin_immediate(conn.connection.dbapi_connection)


def begin_immediate(
    dbapi_connection: Any, *, timeout: float = SQLITE_BUSY_TIMEOUT_MS / 1000
) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock in short pauses.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ms and more between tries: long beside
    one of gleitzeit's write transactions (a quarter of a millisecond), so with a few
    worker processes each one spent more time asleep than waiting. Here the pauses start
    at 0.1 ms and double up to 2 ms, for ``timeout`` seconds; then SQLAlchemy's
    ``OperationalError``, which the store retries as it does any busy database.
    """
    deadline = time.monotonic() + timeout
    pause = SQLITE_WRITE_LOCK_PAUSES[0]
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 0")
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise OperationalError("BEGIN IMMEDIATE", (), exc) from exc
            time.sleep(pause)
            pause = min(pause * 2, SQLITE_WRITE_LOCK_PAUSES[1])
    finally:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_BUSY)
    return "database is locked" in str(exc)


def make_engine(url: str) -> Engine:
    """A new engine for ``url`` with gleitzeit's settings for its database.

    Raises :class:`ConfigurationError` for a URL that names no database gleitzeit can
    use, or one whose driver is not installed.
    """
    url = normalize_url(url)
    try:
        return _make_engine(url)
    except ArgumentError as exc:  # NoSuchModuleError too: an unknown scheme
        raise _bad_url(url, exc) from exc
    except ImportError as exc:  # the dialect imports its driver when the engine is made
        raise _missing_driver(url, exc) from exc


def _make_engine(url: str) -> Engine:
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        _configure_sqlite(engine)
        return engine
    # no pre-ping (a round trip per checkout): a connection found dead by its first
    # statement is invalidated, with the rest of the pool, and the store's transaction
    # retries on a new one
    # a host that drops packets fails a connection after this long, not after the
    # system's TCP timeout (minutes): the store's retries, or a person, decide what next
    given = make_url(url).query
    timeout = {} if "connect_timeout" in given else {"connect_timeout": PG_CONNECT_TIMEOUT}
    engine = create_engine(url, pool_size=5, max_overflow=10, connect_args=timeout)
    _configure_postgres(engine)
    return engine


def _configure_postgres(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Generic plans for prepared statements: psycopg prepares a statement from its
        # fifth execution; gleitzeit's are lookups by key, whose plan does not depend on
        # the values, and PostgreSQL otherwise kept planning the larger ones (PG_START)
        # anew at each execution, at more than the cost of running them. A SET, not a
        # startup option, which PgBouncer would refuse.
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_generic_plan")
        dbapi_connection.commit()


def engine_for(url: str) -> Engine:
    """The engine of this process for ``url`` (one per URL and process)."""
    key = (os.getpid(), normalize_url(url))
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(url)
        return engine


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for (pid, _url), engine in list(_engines.items()):
        # the parent's connections must not be closed or reused from the child
        engine.dispose(close=False)
        del _engines[(pid, _url)]


os.register_at_fork(after_in_child=_after_fork_in_child)
