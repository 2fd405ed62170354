"""Three listeners of one resource, whose first attempts dispatch runs one after another in its
own task (tasks/dispatch/inline.py): each still runs, retries and fails on its own, as its own
Celery task would.

- One that raises on every attempt ends in the dead letters alone, after its own retries; the
  two others receive every event once.
- One that is slow holds the others back only for its first two runs in each pool process (the
  first is not timed): its average then passes the budget (tasks/dispatch/pace.py), and it gets
  a task of its own per event, while the others run on in dispatch.
- A worker killed (main process and pool, SIGKILL) while dispatch runs them, and holds the
  dispatch messages it took behind its own, loses no event: those messages come back, and each
  listener's own task tries again. What had run before the kill runs again: duplicates, at most
  one per listener for each message the dead worker held.

Events are published as the web side publishes them (its publisher), to a real worker with two
pool processes, on a redis-server of each test's own.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable

import pytest
import redis

from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tasks.dead_letters import DeadLetters
from tasks.dispatch.run import TAKE_AT_MOST
from tests.integration.conftest import worker_starter
from tests.integration.isolation_listeners import (
    BROKEN_ATTEMPTS,
    LISTENERS,
    RECEIVED,
    RUNS,
    SLOW,
)
from tests.support.processes import CeleryWorker, RedisServer, wait_until

VISIBILITY_TIMEOUT = 5  # seconds: a dead worker's messages come back within seconds
CONCURRENCY = 2  # pool processes of each worker
EVENTS = 50
#: Events of the kill: enough that a worker is killed while it holds messages it took.
KILLED_EVENTS = 300
#: When the worker is killed: once a listener received this many of the events.
KILL_AFTER = 60

start_worker = worker_starter("tests.integration.isolation_listeners", VISIBILITY_TIMEOUT)


@pytest.fixture
def client(broker: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(broker.url)


def publish(broker: RedisServer, resource_name: str, count: int) -> list[str]:
    """Publish ``count`` create events of ``resource_name`` as the web side does; their ids."""
    publisher = CeleryPublisher(broker.url, 5)
    event_ids = []
    try:
        for number in range(count):
            message = encode(
                {"resource_name": resource_name, "action": "create", "uri": f"/{resource_name}"},
                [{"new": {"id": f"r{number}"}}],
                [0],
                request_id=f"req-{number}",
            )
            publisher.publish(message, "notifier")
            event_ids.append(message.event_id)
    finally:
        publisher.close()
    return event_ids


def received(client: redis.Redis, listener: str) -> Counter[str]:
    """How many times ``listener`` received each event, by event id."""
    return Counter(
        {key.decode(): int(runs) for key, runs in client.hgetall(RECEIVED.format(listener)).items()}
    )


def runs(client: redis.Redis, listener: str) -> list[dict]:
    """``listener``'s runs, in the order they ended."""
    return [json.loads(run) for run in client.lrange(RUNS.format(listener), 0, -1)]


def in_dispatch(client: redis.Redis, listeners: Iterable[str]) -> dict[str, int]:
    """How many runs of each of ``listeners`` dispatch ran itself."""
    return {name: sum(run["inline"] for run in runs(client, name)) for name in listeners}


def held(client: redis.Redis) -> dict[str, int]:
    """What the broker still holds: each queue's messages, and those handed out unacknowledged."""
    left = {}
    for key in client.scan_iter(count=1000):
        name = key.decode(errors="replace")
        if client.type(key) == b"list" and not name.startswith("isolation:"):
            left[name] = int(client.llen(key))
    if unacked := int(client.hlen("unacked")):
        left["unacked"] = unacked
    return {name: count for name, count in left.items() if count}


def wait_until_settled(
    client: redis.Redis, listeners: Iterable[str], published: list[str], timeout: float
) -> None:
    """Wait until each of ``listeners`` received every event of ``published`` and the broker
    holds nothing, twice in a row a second apart (a retry or a duplicate may come after)."""
    names = list(listeners)

    def done() -> bool:
        return not held(client) and all(
            set(received(client, name)) >= set(published) for name in names
        )

    def settled() -> bool:
        if not done():
            return False
        time.sleep(1)
        return done()

    wait_until(settled, timeout, f"{names} receiving {len(published)} events, and nothing held")


def once_each(event_ids: list[str]) -> Counter[str]:
    return Counter(event_ids)


def test_a_listener_that_always_raises_fails_alone_and_the_two_others_get_every_event_once(
    start_worker: Callable[..., CeleryWorker], broker: RedisServer, client: redis.Redis
) -> None:
    start_worker("failing", concurrency=CONCURRENCY)
    first, broken, last = LISTENERS["failing"]

    published = publish(broker, "failing", EVENTS)

    wait_until_settled(client, (first, broken, last), published, 30)
    letters = list(DeadLetters(client))
    print(f"runs in dispatch: {in_dispatch(client, (first, broken, last))}")
    assert received(client, first) == once_each(published)
    assert received(client, last) == once_each(published)
    assert received(client, broken) == Counter({e: BROKEN_ATTEMPTS for e in published})
    assert Counter(letter.message["event_id"] for letter in letters) == once_each(published)
    assert {(letter.listener, letter.attempts, letter.reason) for letter in letters} == {
        (broken, BROKEN_ATTEMPTS, "RuntimeError: fails on every attempt")
    }
    # Dispatch ran first attempts only; the retries were the listener's own task's.
    broken_runs = runs(client, broken)
    assert any(run["inline"] for run in broken_runs)
    assert all(run["retries"] == 0 for run in broken_runs if run["inline"])
    assert Counter(run["retries"] for run in broken_runs) == {0: EVENTS, 1: EVENTS}


def test_a_slow_listener_holds_the_two_others_back_only_for_its_first_runs_in_each_process(
    start_worker: Callable[..., CeleryWorker], broker: RedisServer, client: redis.Redis
) -> None:
    start_worker("slow", concurrency=CONCURRENCY)
    slow, first, second = LISTENERS["slow"]
    started = time.time()

    published = publish(broker, "slow", EVENTS)

    wait_until_settled(client, (slow, first, second), published, 30)
    slow_runs = runs(client, slow)
    slow_times = sorted(run["at"] for run in slow_runs)
    fast_done = max(run["at"] for name in (first, second) for run in runs(client, name))
    inline = sum(run["inline"] for run in slow_runs)
    print(
        f"fast listeners done in {fast_done - started:.2f} s; the slow one got half its events "
        f"in {slow_times[EVENTS // 2 - 1] - started:.2f} s, all in {slow_times[-1] - started:.2f} "
        f"s ({EVENTS} x {SLOW} s), {inline} of them in dispatch; the others' runs in dispatch "
        f"{in_dispatch(client, (first, second))}"
    )
    for name in (slow, first, second):
        assert received(client, name) == once_each(published), name
    # Each pool process runs it in dispatch twice (the first run is not timed), then sends it a
    # task of its own per event.
    assert 1 <= inline <= 2 * CONCURRENCY
    assert fast_done < slow_times[EVENTS // 2 - 1]


def test_a_worker_killed_while_dispatch_runs_listeners_loses_no_event(
    start_worker: Callable[..., CeleryWorker], broker: RedisServer, client: redis.Redis
) -> None:
    names = LISTENERS["killed"]
    doomed = start_worker("doomed", concurrency=CONCURRENCY)
    published = publish(broker, "killed", KILLED_EVENTS)
    wait_until(
        lambda: max(len(received(client, name)) for name in names) >= KILL_AFTER,
        20,
        f"a listener receiving {KILL_AFTER} events",
    )

    doomed.kill()
    at_kill = {name: len(received(client, name)) for name in names}
    held_at_kill = int(client.hlen("unacked"))  # what the dead worker was handed or took
    start_worker("heir", concurrency=CONCURRENCY)

    wait_until_settled(client, names, published, 40)
    counts = {name: received(client, name) for name in names}
    lost = {name: set(published) - set(counts[name]) for name in names}
    phantoms = {name: set(counts[name]) - set(published) for name in names}
    duplicated = {name: sum(n - 1 for n in counts[name].values()) for name in names}
    most = {name: max(counts[name].values()) for name in names}
    inline = in_dispatch(client, names)
    print(
        f"received at the kill {at_kill}, {held_at_kill} messages held by the dead worker; "
        f"duplicated {duplicated}; most deliveries of one event {most}; run in dispatch {inline}"
    )
    assert 0 < held_at_kill <= CONCURRENCY * TAKE_AT_MOST
    assert all(count < KILLED_EVENTS for count in at_kill.values())
    assert lost == {name: set() for name in names}
    assert phantoms == {name: set() for name in names}
    assert max(duplicated.values()) <= held_at_kill
    assert max(most.values()) <= 2
    assert len(DeadLetters(client)) == 0
    # Dispatch ran first attempts only; after the kill, each listener's own task tried again.
    for name in names:
        attempts = Counter(run["retries"] for run in runs(client, name) if run["inline"])
        assert set(attempts) == {0}, name
        assert sum(run["retries"] == 1 for run in runs(client, name)) >= duplicated[name], name
