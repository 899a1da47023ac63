"""The store's statements of every task on PostgreSQL, run on psycopg's connection directly.

On PostgreSQL a task's start and success are one statement each, in autocommit
(``statements.PG_START`` and ``PG_SUCCEED``), and so are the wait for the success on disk
(``PG_CONFIRM_SUCCESS``), a ledger mark on its own (``PG_MARK_PUBLISHED``) and a submit
(``PG_CREATE_RUN``). Through a
SQLAlchemy ``Connection`` each one cost the worker about 250 us of CPU around the round trip
itself (the connection object, the autocommit isolation level set and reset, the result
object, the events) against about 100 us on psycopg's own cursor; a no-op task's whole
pool-process time was some 1.3 ms. So these statements take a connection from the engine's
pool (whose size, after-fork handling and invalidation stay SQLAlchemy's), run on psycopg's
cursor in autocommit, and give it back.

A failure is raised as SQLAlchemy's exception for it, so the store retries it as any other
(a lost connection, a deadlock), and the connection it happened on is invalidated: thrown
away, not given back; so is one whose statement was interrupted (a time limit's exception),
which may still be in autocommit. SQLAlchemy's engine events do not see these statements;
callables given to :func:`listen` do, with each statement's SQL (the tests and the benchmark
count statements with them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

_listeners: list[Callable[[str], None]] = []


def listen(listener: Callable[[str], None]) -> None:
    """Call ``listener`` with the SQL of every statement run directly, before it runs."""
    _listeners.append(listener)


def remove(listener: Callable[[str], None]) -> None:
    _listeners.remove(listener)


def supported(engine: Engine) -> bool:
    """Whether ``engine`` is PostgreSQL through psycopg 3, which this module drives."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


class DirectStatements:
    """Runs the store's text statements on ``engine``'s psycopg connections."""

    def __init__(self, engine: Engine) -> None:
        import psycopg
        from psycopg.rows import namedtuple_row

        self._engine = engine
        self._error: type[Exception] = psycopg.Error
        self._rows = namedtuple_row
        #: each statement's SQL in psycopg's parameter style, compiled once
        self._sql: dict[TextClause, str] = {}

    def run(self, statement: TextClause, params: Mapping[str, Any]) -> list[Any]:
        """The rows of ``statement`` run alone in autocommit; each row's columns by name."""
        sql = self._sql.get(statement)
        if sql is None:
            sql = self._sql[statement] = str(statement.compile(dialect=self._engine.dialect))
        for listener in _listeners:
            listener(sql)
        try:
            # the pool raises the driver's own error when it cannot connect
            pooled = self._engine.raw_connection()
        except self._error as exc:
            raise self._failure(sql, params, exc, lost=True) from exc
        try:
            connection: Any = pooled.driver_connection
            try:
                connection.autocommit = True
                with connection.cursor(row_factory=self._rows) as cursor:
                    cursor.execute(sql, params)
                    rows: list[Any] = cursor.fetchall()
                connection.autocommit = False
            except self._error as exc:
                lost = self._engine.dialect.is_disconnect(cast(Any, exc), connection, None)
                pooled.invalidate(exc)
                raise self._failure(sql, params, exc, lost=lost) from exc
            except BaseException as exc:
                # interrupted (a time limit's exception, a signal): the connection may be in
                # autocommit or mid-statement, and must not serve a transaction again
                pooled.invalidate(exc)
                raise
            return rows
        finally:
            pooled.close()

    def _failure(
        self, sql: str, params: Mapping[str, Any], error: Exception, *, lost: bool
    ) -> BaseException:
        """SQLAlchemy's exception for the driver's ``error`` (``OperationalError`` for a lost
        or refused connection, ``IntegrityError`` for a violated constraint, ...)."""
        wrapped = DBAPIError.instance(
            sql,
            dict(params),
            error,
            self._error,
            connection_invalidated=lost,
            dialect=self._engine.dialect,
        )
        assert isinstance(wrapped, BaseException)
        return wrapped
