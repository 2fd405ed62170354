"""Workers that die: a listener's message is handed out again within seconds, and a listener
that kills its worker every time stops after a bounded number of attempts, in dead letters."""

from __future__ import annotations

import time

import redis

from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tasks.dead_letters import DeadLetters
from tests.integration.conftest import worker_starter
from tests.support.processes import RedisServer, wait_until

VISIBILITY_TIMEOUT = 6  # seconds: short, so that the tests are too


start_worker = worker_starter("tests.integration.crash_listeners", VISIBILITY_TIMEOUT)


def publish_job(broker: RedisServer, action: str, **payload: object) -> str:
    message = encode(
        {"resource_name": "job", "action": action, **payload}, [{"new": {"id": "j1"}}], [0], "r"
    )
    publisher = CeleryPublisher(broker.url, 5)
    publisher.publish(message, "notifier")
    publisher.close()
    return message.event_id


def test_a_listener_whose_worker_is_killed_runs_again_on_another_worker_within_seconds(
    broker, start_worker
):
    client = redis.Redis.from_url(broker.url)
    first = start_worker("first")
    event_id = publish_job(broker, "create", seconds=2)
    wait_until(lambda: client.llen(f"crash:started:{event_id}") == 1, 20, "the listener started")

    first.kill()
    killed_at = time.monotonic()
    start_worker("second")

    wait_until(
        lambda: client.llen(f"crash:finished:{event_id}") == 1,
        VISIBILITY_TIMEOUT * 5,
        "the listener finished on the second worker",
    )
    print(f"finished {time.monotonic() - killed_at:.1f} s after the first worker was killed")
    assert client.llen(f"crash:started:{event_id}") == 2


def test_a_listener_longer_than_the_visibility_timeout_runs_once(broker, start_worker):
    client = redis.Redis.from_url(broker.url)
    start_worker("only", concurrency=2)
    event_id = publish_job(broker, "create", seconds=VISIBILITY_TIMEOUT * 2)

    wait_until(
        lambda: client.llen(f"crash:finished:{event_id}") == 1,
        VISIBILITY_TIMEOUT * 5,
        "the slow listener finished",
    )
    time.sleep(VISIBILITY_TIMEOUT / 2)

    assert client.llen(f"crash:started:{event_id}") == 1


def test_a_listener_whose_pool_process_is_killed_runs_again_at_once(broker, start_worker):
    client = redis.Redis.from_url(broker.url)
    start_worker("only")

    event_id = publish_job(broker, "update")

    wait_until(
        lambda: client.llen(f"crash:finished:{event_id}") == 1,
        VISIBILITY_TIMEOUT,
        "the listener finished on its second attempt",
    )
    assert int(client.get(f"crash:attempts:{event_id}")) == 2


def test_a_listener_that_kills_its_worker_every_time_ends_in_the_dead_letters(broker, start_worker):
    client = redis.Redis.from_url(broker.url)
    start_worker("only")

    event_id = publish_job(broker, "delete")

    dead_letters = DeadLetters(client)
    wait_until(lambda: len(dead_letters) == 1, 60, "the listener's message in the dead letters")
    [letter] = dead_letters
    assert letter.listener == "tests.integration.crash_listeners.dies_every_time"
    assert "WorkerLostError" in letter.reason
    assert int(client.get(f"crash:attempts:{event_id}")) == 3  # max_retries=2: three attempts


def test_a_listener_that_keeps_failing_is_retried_then_kept_in_the_dead_letters(
    broker, start_worker
):
    client = redis.Redis.from_url(broker.url)
    start_worker("only")

    message = encode({"resource_name": "poison", "action": "create"}, [{"new": {}}], [0], "r")
    publisher = CeleryPublisher(broker.url, 5)
    publisher.publish(message, "notifier")
    publisher.close()

    dead_letters = DeadLetters(client)
    wait_until(lambda: len(dead_letters) == 1, 30, "the listener's message in the dead letters")
    [letter] = dead_letters
    assert letter.reason == "RuntimeError: this listener fails every time"
    assert letter.listener == "tests.integration.crash_listeners.always_raises"
    assert int(client.get(f"crash:attempts:{message.event_id}")) == 3
