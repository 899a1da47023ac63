"""The test suite's own service helpers, checked against real redis-server and PostgreSQL."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.services import RedisServer, free_port, postgres_database, wait_until

POSTGRES_URL_VAR = "GLEITZEIT_TEST_POSTGRES_URL"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()
    assert not server.is_running()


@pytest.fixture
def admin_url() -> str:
    url = os.environ.get(POSTGRES_URL_VAR)
    if not url:
        pytest.skip(f"{POSTGRES_URL_VAR} is not set; no PostgreSQL server to test against")
    return url


def _client(url: str) -> redis.Redis:
    # No retries, so a stopped server fails the probe at once instead of after a backoff.
    return redis.Redis.from_url(
        url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
    )


def _answers_ping(url: str) -> bool:
    try:
        return bool(_client(url).ping())
    except redis.ConnectionError:
        return False


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


# ------------------------------------------------------------------------------ free_port


def test_free_port_can_be_bound_on_localhost() -> None:
    port = free_port()

    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# ----------------------------------------------------------------------------- wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls: list[int] = []

    def third_call() -> list[int] | None:
        calls.append(len(calls))
        return calls if len(calls) == 3 else None

    assert wait_until(third_call, timeout=5, interval=0.001, message="never") == [0, 1, 2]


def test_wait_until_raises_with_message_and_last_value_after_timeout() -> None:
    started = time.monotonic()

    with pytest.raises(AssertionError, match=r"queue never drained .*last value: 0\)"):
        wait_until(lambda: 0, timeout=0.2, message="queue never drained")

    assert time.monotonic() - started >= 0.2


# ---------------------------------------------------------------------------- RedisServer


@pytest.mark.integration
def test_redis_server_listens_on_localhost_without_persistence(redis_server: RedisServer) -> None:
    client = _client(redis_server.url)

    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert client.ping() is True
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}


@pytest.mark.integration
def test_redis_server_url_for_selects_the_logical_database(redis_server: RedisServer) -> None:
    _client(redis_server.url_for(3)).set("only-in-3", "x")

    assert redis_server.url_for(3) == f"redis://127.0.0.1:{redis_server.port}/3"
    assert _client(redis_server.url_for(3)).get("only-in-3") == b"x"
    assert _client(redis_server.url).get("only-in-3") is None


@pytest.mark.integration
def test_redis_server_shutdown_nosave_then_restart_on_the_same_port(
    redis_server: RedisServer,
) -> None:
    port = redis_server.port
    _client(redis_server.url).set("lost", "1")

    redis_server.shutdown_nosave()

    assert not redis_server.is_running()
    assert not _answers_ping(redis_server.url)

    redis_server.restart()

    assert redis_server.is_running()
    assert redis_server.port == port
    assert _answers_ping(redis_server.url)
    assert _client(redis_server.url).get("lost") is None  # nothing was persisted


@pytest.mark.integration
def test_redis_server_kill_then_restart(redis_server: RedisServer) -> None:
    client = _client(redis_server.url)
    assert client.ping()

    redis_server.kill()

    assert not redis_server.is_running()
    with pytest.raises(redis.ConnectionError):
        _client(redis_server.url).ping()

    redis_server.restart()

    wait_until(lambda: _answers_ping(redis_server.url), timeout=5, message="no PING after restart")


@pytest.mark.integration
def test_redis_server_stop_is_idempotent(redis_server: RedisServer) -> None:
    redis_server.stop()
    redis_server.stop()

    assert not redis_server.is_running()
    assert not _answers_ping(redis_server.url)


@pytest.mark.integration
def test_redis_server_start_fails_with_the_log_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(RuntimeError, match="Address already in use"):
            RedisServer.start(tmp_path, port)


def test_redis_server_start_says_how_to_install_a_missing_redis_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        RedisServer.start(tmp_path)


# ----------------------------------------------------------------------- postgres_database


@pytest.mark.integration
def test_postgres_database_is_created_usable_and_dropped(admin_url: str) -> None:
    with postgres_database(admin_url) as url:
        name = url.rsplit("/", 1)[1]
        assert url.startswith("postgresql+psycopg://")
        assert name.startswith("gz_")
        assert _libpq(url).rsplit("/", 1)[0] == admin_url.rsplit("/", 1)[0]
        assert _database_exists(admin_url, name)

        # Left open on purpose: dropping must not wait for, or fail because of, this session.
        lingering = psycopg.connect(_libpq(url), autocommit=True)
        lingering.execute("CREATE TABLE t (x int)")
        lingering.execute("INSERT INTO t VALUES (42)")
        assert lingering.execute("SELECT x FROM t").fetchall() == [(42,)]

    try:
        assert not _database_exists(admin_url, name)
        with pytest.raises(psycopg.OperationalError):
            lingering.execute("SELECT 1")
    finally:
        lingering.close()


@pytest.mark.integration
def test_postgres_database_is_dropped_when_the_block_fails(admin_url: str) -> None:
    with pytest.raises(ZeroDivisionError), postgres_database(admin_url) as url:
        name = url.rsplit("/", 1)[1]
        assert _database_exists(admin_url, name)
        1 / 0  # noqa: B018

    assert not _database_exists(admin_url, name)
