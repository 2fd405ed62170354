"""What an operator sees of a real worker with Celery's own tools: the task events Flower and
``celery events`` read, ``inspect active``, and the control commands ``rate_limit`` and
``revoke``, whichever path ran each listener (in dispatch, taken by another dispatch run, or as
its own task)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from notifier.publisher import CeleryPublisher
from notifier.wire.message import Message, encode
from tests.integration.conftest import module_redis_server
from tests.support.processes import CeleryWorker, RedisServer, wait_until

broker = module_redis_server()


@pytest.fixture(scope="module")
def worker(broker: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryWorker]:
    directory: Path = tmp_path_factory.mktemp("watched-worker")
    process = CeleryWorker(
        directory,
        {
            "CELERY_BROKER_URL": broker.url,
            "NOTIFIER_LISTENERS": "tests.integration.watched_listeners",
        },
        name="watched-worker",
        options=["-E"],  # task events on, as an operator watching with Flower starts it
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def control(broker: RedisServer) -> Iterator[Celery]:
    app = Celery(broker=broker.url)
    yield app
    app.close()


class Watched:
    """Celery's view of the task events, as Flower keeps it (``celery.events.state.State``)."""

    def __init__(self, app: Celery) -> None:
        self.state = app.events.State()
        self._app = app
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _capture(self) -> None:
        with self._app.connection_for_read() as connection:
            self._receiver = self._app.events.Receiver(connection, handlers={"*": self.state.event})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Watched:
        self._thread.start()
        # Subscribed once the worker's heartbeats arrive (every 2 s).
        wait_until(lambda: self.state.workers, 20, "the worker's heartbeat")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)

    def task(self, task_id: str) -> Any:
        return self.state.tasks.get(task_id)


@pytest.fixture
def watched(worker: CeleryWorker, control: Celery) -> Iterator[Watched]:
    with Watched(control) as view:
        yield view


def event(resource_name: str, record_id: str = "r1", **payload: Any) -> Message:
    return encode(
        {"resource_name": resource_name, "action": "create", "uri": "/things", **payload},
        [{"new": {"id": record_id}}],
        [0],
        request_id="req-1",
    )


def publish(broker: RedisServer, *messages: Message) -> list[str]:
    publisher = CeleryPublisher(broker.url, 5)
    try:
        for message in messages:
            publisher.publish(message, "notifier")
    finally:
        publisher.close()
    return [message.event_id for message in messages]


def finished(watched: Watched, task_ids: list[str]) -> bool:
    return all(
        (task := watched.task(task_id)) is not None and task.state in ("SUCCESS", "FAILURE")
        for task_id in task_ids
    )


def unfinished(watched: Watched, task_ids: list[str]) -> dict[str, int]:
    # How many of ``task_ids`` are in each state, for a failure to show.
    counts: dict[str, int] = {}
    for task_id in task_ids:
        task = watched.task(task_id)
        key = "unseen" if task is None else f"{task.name} {task.state}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_flower_sees_one_task_per_listener_run_with_its_state_and_retries(
    broker: RedisServer, watched: Watched
) -> None:
    lone = publish(broker, *(event("lone", f"r{number}") for number in range(50)))
    trio = publish(broker, *(event("trio", f"t{number}") for number in range(30)))
    failing = publish(broker, *(event("failing", f"f{number}") for number in range(20)))
    listener_tasks = (
        [f"{event_id}:lone" for event_id in lone]
        + [
            f"{event_id}:{name}"
            for event_id in trio
            for name in ("first_of_three", "second_of_three", "third_of_three")
        ]
        + [f"{event_id}:always_fails" for event_id in failing]
    )
    every_task = lone + trio + failing + listener_tasks
    try:
        wait_until(lambda: finished(watched, every_task), 60, "every run reported")
    except TimeoutError:
        pytest.fail(f"not every run reported: {unfinished(watched, every_task)}")

    dispatches = [watched.task(event_id) for event_id in lone + trio + failing]
    assert {(task.name, task.state) for task in dispatches} == {("notifier.dispatch", "SUCCESS")}
    for event_id in lone:
        task = watched.task(f"{event_id}:lone")
        assert (task.name, task.state, task.retries) == ("lone", "SUCCESS", 0)
        assert (task.parent_id, task.root_id) == (event_id, event_id)
        assert f"create lone /things (r{lone.index(event_id)})" in task.args
    for event_id in trio:
        for name in ("first_of_three", "second_of_three", "third_of_three"):
            task = watched.task(f"{event_id}:{name}")
            assert (task.name, task.state) == (name, "SUCCESS")
    for event_id in failing:
        task = watched.task(f"{event_id}:always_fails")
        # Its first attempt in dispatch, retried; its second, its own task's, failed for good.
        assert (task.name, task.state, task.retries) == ("always_fails", "FAILURE", 1)
        assert "fails on every attempt" in task.exception
    assert len(watched.state.tasks) == len(every_task)


def test_inspect_active_names_the_listener_dispatch_is_running(
    broker: RedisServer, worker: CeleryWorker, control: Celery
) -> None:
    [event_id] = publish(broker, event("slow", seconds=4))

    def running_slow() -> list[dict]:
        replies = control.control.inspect(timeout=1).active() or {}
        return [task for tasks in replies.values() for task in tasks if task["name"] == "slow"]

    seen: list[dict] = []
    wait_until(
        lambda: seen.extend(running_slow()) or seen, 10, "the slow listener in inspect active"
    )
    [active] = seen
    assert active["id"] == f"{event_id}:slow"
    assert active["parent_id"] == event_id
    assert "create slow /things (r1)" in active["args"]


def test_a_rate_limit_set_by_control_holds_back_a_lone_listener(
    broker: RedisServer, worker: CeleryWorker, control: Celery
) -> None:
    client = redis.Redis.from_url(broker.url)
    replies = control.control.rate_limit("limited", "20/m", reply=True, timeout=2)
    assert replies
    assert all("ok" in reply[name] for reply in replies for name in reply)
    time.sleep(0.5)  # what the worker's main process knows reaches its pool within 0.05 s

    publish(broker, *(event("limited", f"l{number}") for number in range(3)))

    time.sleep(1.5)
    assert client.llen("watched:limited") == 1  # one run every 3 s
    wait_until(lambda: client.llen("watched:limited") == 3, 15, "the runs held back")

    # "0" lifts the limit, as for any Celery task: dispatch runs the listener again.
    control.control.rate_limit("limited", "0", reply=True, timeout=2)
    time.sleep(0.5)
    [lifted] = publish(broker, event("limited", "lifted"))
    wait_until(lambda: client.llen("watched:limited") == 4, 5, "the run once the limit is lifted")
    last = client.lrange("watched:limited", -1, -1)[0].decode()
    assert last.startswith(lifted)


def test_a_listener_run_revoked_by_control_does_not_run(
    broker: RedisServer, watched: Watched, control: Celery
) -> None:
    client = redis.Redis.from_url(broker.url)
    revoked, after = event("lone", "revoked"), event("lone", "after")
    control.control.revoke(f"{revoked.event_id}:lone")
    time.sleep(0.5)

    publish(broker, revoked, after)

    wait_until(
        lambda: finished(watched, [revoked.event_id, after.event_id, f"{after.event_id}:lone"]),
        10,
        "both events handled",
    )
    assert watched.task(f"{revoked.event_id}:lone").state == "REVOKED"
    runs = client.lrange("watched:lone", 0, -1)
    assert not any(revoked.event_id.encode() in run for run in runs)
    assert any(after.event_id.encode() in run for run in runs)


def test_a_dispatch_revoked_by_control_is_dropped_even_when_another_run_takes_it(
    broker: RedisServer, watched: Watched, control: Celery
) -> None:
    client = redis.Redis.from_url(broker.url)
    burst = [event("lone", f"burst{number}") for number in range(30)]
    revoked = burst[15]  # behind others: a dispatch run already running takes it
    control.control.revoke(revoked.event_id)
    time.sleep(0.5)

    publish(broker, *burst)

    others = [message.event_id for message in burst if message is not revoked]
    wait_until(
        lambda: (
            finished(watched, [f"{event_id}:lone" for event_id in others])
            and (task := watched.task(revoked.event_id)) is not None
            and task.state == "REVOKED"
        ),
        15,
        "the burst handled",
    )
    runs = client.lrange("watched:lone", 0, -1)
    assert not any(revoked.event_id.encode() in run for run in runs)
    assert watched.task(f"{revoked.event_id}:lone") is None
