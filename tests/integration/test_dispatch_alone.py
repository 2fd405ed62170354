"""A message one listener alone wants: its first attempt runs in dispatch, a real worker's, and
its retries and dead letters are the listener's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tasks.dead_letters import DeadLetters
from tests.integration.conftest import module_redis_server
from tests.support.processes import CeleryWorker, RedisServer, wait_until

broker = module_redis_server()


@pytest.fixture(scope="module")
def worker(broker: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    directory: Path = tmp_path_factory.mktemp("alone-worker")
    process = CeleryWorker(
        directory,
        {
            "CELERY_BROKER_URL": broker.url,
            "NOTIFIER_LISTENERS": "tests.integration.alone_listeners",
        },
        name="alone-worker",
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(broker: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(broker.url)


def publish(broker: RedisServer, resource_name: str) -> str:
    message = encode(
        {"resource_name": resource_name, "action": "create", "uri": f"/{resource_name}"},
        [{"new": {"id": "r1"}}],
        [0],
        request_id="req-1",
    )
    publisher = CeleryPublisher(broker.url, 5)
    try:
        publisher.publish(message, "notifier")
    finally:
        publisher.close()
    return message.event_id


def runs(client: redis.Redis, listener: str, event_id: str) -> list[dict]:
    recorded = [json.loads(item) for item in client.lrange(f"alone:{listener}", 0, -1)]
    return [run for run in recorded if run["event_id"] == event_id]


def test_the_one_listener_of_a_message_runs_once_as_its_own_task_would(broker, worker, client):
    event_id = publish(broker, "solo")

    wait_until(lambda: runs(client, "solo", event_id), 20, "the listener running")

    [run] = runs(client, "solo", event_id)
    name = "tests.integration.alone_listeners.solo"
    # Celery's own line for its task's run.
    succeeded = f"Task {name}[{event_id}:{name}] succeeded in"
    wait_until(lambda: succeeded in worker.output(), 5, "Celery logging the run")
    assert run["task_id"] == f"{event_id}:{name}"
    assert run["queue"] == "notifier.listener.tests.integration.alone_listeners.solo"
    assert run["retries"] == 0


def test_a_listener_that_fails_in_dispatch_is_retried_by_its_own_task(broker, worker, client):
    event_id = publish(broker, "flaky_solo")

    wait_until(lambda: len(runs(client, "flaky_solo", event_id)) == 2, 20, "the retry")

    first, second = runs(client, "flaky_solo", event_id)
    assert first["task_id"] == second["task_id"]
    assert (first["retries"], second["retries"]) == (0, 1)


def dead_letters_of(client: redis.Redis, event_id: str) -> list:
    return [
        letter
        for letter in DeadLetters(client)
        if isinstance(letter.message, dict) and letter.message.get("event_id") == event_id
    ]


def test_a_listener_that_keeps_failing_ends_in_the_dead_letters_after_its_attempts(
    broker, worker, client
):
    event_id = publish(broker, "broken_solo")

    wait_until(lambda: dead_letters_of(client, event_id), 20, "the message in the dead letters")

    [letter] = dead_letters_of(client, event_id)
    assert letter.listener == "tests.integration.alone_listeners.broken_solo"
    assert letter.attempts == 2
    assert letter.reason == "RuntimeError: fails on every attempt"
    assert len(runs(client, "broken_solo", event_id)) == 2


def test_a_listener_that_does_not_retry_ends_in_the_dead_letters_from_dispatch(
    broker, worker, client
):
    event_id = publish(broker, "unretried_solo")

    wait_until(lambda: dead_letters_of(client, event_id), 20, "the message in the dead letters")

    [letter] = dead_letters_of(client, event_id)
    assert letter.listener == "tests.integration.alone_listeners.unretried"
    assert letter.attempts == 1
    assert letter.reason == "RuntimeError: never retried"
    assert "never retried" in letter.traceback
