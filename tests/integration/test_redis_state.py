"""What a worker keeps in Redis is bounded by what is in flight, not by how many events it
handled: no key per delivered message, a redelivery count that ends with its message, and a
replayed dead letter that starts with all its attempts.

Each test runs its own redis-server and workers (tests/integration/redis_state_listeners.py).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tasks.dead_letters import DeadLetters
from tests.integration.conftest import module_redis_server, own_redis_server
from tests.support.processes import CeleryWorker, RedisServer, dead_letters_command, wait_until

LISTENERS = "tests.integration.redis_state_listeners"
FLAKY = f"{LISTENERS}.fails_then_succeeds"
#: How many calls of fails_then_succeeds fail, per event (redis_state_listeners.FAILURES_KEY).
FAILURES_KEY = "state:failures"
VISIBILITY_TIMEOUT = 4  # seconds: a dead worker's messages come back within seconds

# The Redis transport's own bookkeeping of the messages workers hold: there while they run.
TRANSPORT_KEYS = {"unacked", "unacked_index", "unacked_mutex"}


server = module_redis_server()


@pytest.fixture(scope="module")
def env(server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": server.url,
        "NOTIFIER_LISTENERS": LISTENERS,
        "NOTIFIER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "NOTIFIER_SEARCH_INDEX": str(tmp_path_factory.mktemp("index") / "index.sqlite3"),
    }


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    process = CeleryWorker(tmp_path_factory.mktemp("worker"), env, name="state")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True)


def publish(url: str, resource_name: str, count: int = 1) -> list[str]:
    """Publish ``count`` create events on ``resource_name``, as the web side does."""
    publisher = CeleryPublisher(url, 0.5)
    event_ids = []
    try:
        for _ in range(count):
            payload = {"resource_name": resource_name, "action": "create", "uri": "/things"}
            message = encode(payload, [{"new": {"id": "t1"}}], [0], uuid.uuid4().hex)
            publisher.publish(message, "notifier")
            event_ids.append(message.event_id)
    finally:
        publisher.close()
    return event_ids


def counted(client: redis.Redis, key: str) -> int:
    return int(client.get(key) or 0)


def settled_keys(client: redis.Redis) -> set[str]:
    """The keys once every message is handled: neither queues nor the transport's bookkeeping."""
    keys = set(client.scan_iter(count=1000))
    queues = {key for key in keys if client.type(key) == "list"}
    return keys - queues - TRANSPORT_KEYS


def handle(client: redis.Redis, url: str, events: int) -> set[str]:
    """Publish ``events`` events, half for two listeners, half for one (which dispatch runs
    itself); wait until each listener ran on each; return the keys left."""
    before = {key: counted(client, key) for key in ("state:pair:second", "state:alone")}
    publish(url, "pair", events // 2)
    publish(url, "alone", events // 2)
    wait_until(
        lambda: (
            counted(client, "state:pair:second") == before["state:pair:second"] + events // 2
            and counted(client, "state:alone") == before["state:alone"] + events // 2
        ),
        events / 20 + 60,
        f"the listeners handling {events} events",
    )
    wait_until(lambda: client.hlen("unacked") == 0, 30, "every message acknowledged")
    return settled_keys(client)


def test_the_redis_keys_do_not_grow_with_the_events(worker, server, client):
    after_1_000 = handle(client, server.url, 1_000)
    size_1_000 = client.dbsize()
    after_10_000 = handle(client, server.url, 9_000)
    size_10_000 = client.dbsize()

    print(f"DBSIZE {size_1_000} after 1,000 events, {size_10_000} after 10,000")
    assert counted(client, "state:pair:first") == 5_000
    assert after_10_000 == after_1_000
    assert not [key for key in after_10_000 if "deliveries" in key]
    assert len(after_10_000) < 20  # the listeners' counters, kombu's bindings, the fleet's


def succeeded(client: redis.Redis, event_id: str) -> list[dict]:
    return [
        done
        for done in map(json.loads, client.lrange("state:succeeded", 0, -1))
        if done["event_id"] == event_id
    ]


def test_a_replayed_dead_letter_runs_with_all_its_attempts(worker, server, client, env):
    # Three calls fail (its three attempts), then a dead letter; replayed, two more fail.
    client.set(FAILURES_KEY, 5)
    [event_id] = publish(server.url, "flaky")
    store = DeadLetters(client)
    wait_until(lambda: len(store) == 1, 30, "the flaky listener's message in the dead letters")
    [letter] = store
    assert (letter.listener, letter.attempts) == (FLAKY, 3)
    assert letter.reason == "RuntimeError: call 3 fails"

    replayed = dead_letters_command(env, "replay", letter.id)

    assert replayed.returncode == 0, replayed.stderr
    wait_until(lambda: succeeded(client, event_id), 30, "the replayed listener succeeding")
    assert succeeded(client, event_id) == [{"event_id": event_id, "calls": 6}]
    assert len(store) == 0
    assert not [key for key in client.scan_iter() if "redeliveries" in key]


def test_a_listener_whose_whole_worker_dies_each_time_ends_in_the_dead_letters(
    tmp_path: Path,
) -> None:
    server = own_redis_server(tmp_path)
    workers: list[CeleryWorker] = []
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        env = {
            "CELERY_BROKER_URL": server.url,
            "NOTIFIER_LISTENERS": LISTENERS,
            "NOTIFIER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
            "NOTIFIER_SEARCH_INDEX": str(tmp_path / "index.sqlite3"),
        }
        [event_id] = publish(server.url, "doomed")
        store = DeadLetters(client)

        started = 0

        def dead_lettered() -> bool:
            # Each worker dies on the message: start another one, as an orchestrator would.
            nonlocal started
            if not workers or not workers[-1].alive():
                started += 1
                # It may take the message, and die, before it says it is ready.
                with contextlib.suppress(RuntimeError):
                    workers.append(
                        CeleryWorker(tmp_path, env, concurrency=1, name=f"doomed{started}")
                    )
            return len(store) == 1

        wait_until(dead_lettered, VISIBILITY_TIMEOUT * 30, "the message in the dead letters")

        [letter] = store
        # max_retries=1 and one delivery more: its first attempt in dispatch, its second
        # attempt as its own task, one redelivery; the next is kept.
        assert letter.reason == "delivered 4 times without finishing: its worker died each time"
        assert int(client.hget("state:calls", event_id) or 0) == 3
        wait_until(
            lambda: not [key for key in client.scan_iter() if "redeliveries" in key],
            10,
            "no redelivery count left",
        )
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
