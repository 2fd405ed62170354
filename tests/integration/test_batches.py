"""Batch listeners and dispatch taking several messages, with a real worker: events arrive in
lists, and a worker killed (SIGKILL) while it holds taken messages or a batch loses none."""

from __future__ import annotations

import json

import pytest
import redis

from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tests.integration.conftest import worker_starter
from tests.support.processes import RedisServer, wait_until

VISIBILITY_TIMEOUT = 6  # seconds: short, so that the tests are too


@pytest.fixture
def client(broker):
    return redis.Redis.from_url(broker.url)


start_worker = worker_starter("tests.integration.batch_listeners", VISIBILITY_TIMEOUT)


def publish(broker: RedisServer, resource_name: str, count: int, seconds: float = 0) -> list[str]:
    publisher = CeleryPublisher(broker.url, 5)
    ids = []
    try:
        for number in range(count):
            message = encode(
                {"resource_name": resource_name, "action": "create", "seconds": seconds},
                [{"new": {"id": f"a{number}"}}],
                [0],
                "r",
            )
            publisher.publish(message, "notifier")
            ids.append(message.event_id)
    finally:
        publisher.close()
    return ids


def runs(client: redis.Redis, key: str) -> list[list[str]]:
    return [json.loads(item) for item in client.lrange(key, 0, -1)]


def events_in(client: redis.Redis, key: str) -> set[str]:
    return {event_id for run in runs(client, key) for event_id in run}


def test_a_batch_listener_receives_the_queued_events_in_lists_in_their_order(
    broker, client, start_worker
):
    ids = publish(broker, "bulk_article", 120)  # queued before any worker runs

    worker = start_worker("batches")

    wait_until(lambda: len(events_in(client, "batches:finished")) == 120, 30, "every event")
    received = runs(client, "batches:finished")
    assert [event_id for run in received for event_id in run] == ids
    assert max(len(run) for run in received) == 50
    assert len(received) <= 5
    assert "sent to batch listener tests.integration.batch_listeners.index_in_bulk" in (
        worker.output()
    )


def test_a_worker_killed_while_its_batch_runs_loses_no_event(broker, client, start_worker):
    client.set("batches:slow", 1)
    ids = publish(broker, "bulk_article", 10)
    first = start_worker("first")
    wait_until(lambda: runs(client, "batches:started"), 30, "the batch started")
    assert len(runs(client, "batches:started")[0]) == 10  # one batch: dispatch took them all

    first.kill()
    client.delete("batches:slow")
    start_worker("second")

    # The batch that comes again goes on event by event.
    wait_until(
        lambda: events_in(client, "batches:finished") == set(ids),
        VISIBILITY_TIMEOUT * 5,
        "every event handed out again",
    )
    assert all(len(run) == 1 for run in runs(client, "batches:finished"))


def test_a_worker_killed_while_it_holds_messages_it_took_loses_none(broker, client, start_worker):
    # The first message is quick; dispatch takes the slow ones behind it, and runs the first.
    ids = publish(broker, "slow_article", 1) + publish(broker, "slow_article", 4, seconds=3)
    first = start_worker("first")
    wait_until(lambda: len(runs(client, "slow:started")) == 2, 30, "the first slow event started")
    assert client.llen("notifier") == 0
    assert client.hlen("unacked") >= 4

    first.kill()
    start_worker("second")

    wait_until(
        lambda: events_in(client, "slow:finished") == set(ids),
        VISIBILITY_TIMEOUT * 5 + 10,
        "every event finished",
    )
