"""Fixtures: a real redis-server, real databases and real Celery worker processes.

Every integration test runs against SQLite and, when ``GLEITZEIT_TEST_POSTGRES_URL``
names a server (``.ci/run`` gives the local one), PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gleitzeit import Client, Settings
from gleitzeit.store import Store
from tests.services import CeleryWorker, RedisServer, postgres_database

POSTGRES_ENV = "GLEITZEIT_TEST_POSTGRES_URL"
STORES = ["sqlite", "postgresql"]


def postgres_admin_url() -> str:
    """The PostgreSQL server the tests may use (``POSTGRES_ENV``); the test is skipped
    when none is given."""
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against")
    return admin_url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=STORES)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'gleitzeit.db'}"
        return
    with postgres_database(postgres_admin_url()) as url:
        yield url


@pytest.fixture(scope="session")
def store(database_url: str) -> Store:
    return Store.open(database_url)


@pytest.fixture(scope="session")
def broker_url(redis_server: RedisServer, database_url: str) -> str:
    # one Redis database per store, so the two sets of workers never share a queue
    return redis_server.url_for(
        STORES.index("sqlite" if "sqlite" in database_url else "postgresql")
    )


@pytest.fixture(scope="session")
def worker(
    broker_url: str, database_url: str, store: Store, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """One Celery worker with four prefork processes, as ``celery -A gleitzeit.worker``."""
    with CeleryWorker.running(
        broker_url=broker_url,
        database_url=database_url,
        log_dir=tmp_path_factory.mktemp("worker"),
        concurrency=4,
    ) as started:
        yield started


@pytest.fixture
def client(worker: CeleryWorker, broker_url: str, database_url: str) -> Client:
    return Client(settings=Settings(database_url=database_url, broker_url=broker_url))


@pytest.fixture
def marks(tmp_path: Path) -> str:
    """A folder where test tasks leave one file per execution."""
    folder = tmp_path / "marks"
    folder.mkdir()
    return str(folder)
