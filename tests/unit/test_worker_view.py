"""What a worker's main process tells its pool processes (task events on, rate limits,
revokes) and what they tell it (the listener each runs in dispatch), and the task events the
fast paths send."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, states
from celery.events import Event
from celery.exceptions import Reject, Retry

from tasks.broker import worker_view
from tasks.broker.tracing import Traced
from tasks.broker.worker_view import MAX_REVOKED, Revoked, View, WorkerView, main_view
from tasks.dispatch.task_events import TaskEvents


def test_a_pool_process_reads_the_view_the_main_process_wrote_last():
    shared = WorkerView()
    assert shared.view() == View()

    shared.write(View(events=True, rate_limited=frozenset({"slow"})))
    shared.write(View(events=True, rate_limited=frozenset({"slow"}), revoked=frozenset({"e:x"})))

    assert shared.view() == View(True, frozenset({"slow"}), frozenset({"e:x"}))


def test_a_view_is_written_again_only_when_it_changed():
    shared = WorkerView()
    shared.write(View(events=True))
    generation = shared._generation

    shared.write(View(events=True))

    assert shared._generation == generation


def test_of_many_revoked_ids_the_fast_paths_see_the_newest_and_the_log_says_so(caplog):
    revoked = [f"{number:032x}:listener" for number in range(3000)]  # oldest first, as Celery's

    seen = Revoked().newest(revoked)
    shared = WorkerView()
    shared.write(View(revoked=seen))

    assert shared.view().revoked == set(revoked[-MAX_REVOKED:])
    assert f"3000 ids revoked: the fast paths see the newest {MAX_REVOKED}" in caplog.text


def test_a_pool_process_never_reads_half_of_a_view_being_written():
    shared = WorkerView()
    shared.write(View(events=True, rate_limited=frozenset({"limited"})))
    shared.view()  # what a read that finds the view being written keeps
    reader = os.fork()
    if reader == 0:  # the pool process: reads while the main process writes
        bad = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            shared._read_generation = -1  # read it whole each time, not from the cache
            if shared.view().rate_limited != {"limited"}:
                bad += 1
        os._exit(min(bad, 1))
    for number in range(20_000):
        shared.write(View(events=number % 2 == 0, rate_limited=frozenset({"limited"})))
    _, status = os.waitpid(reader, 0)

    assert os.waitstatus_to_exitcode(status) == 0


def test_the_main_process_sees_the_run_of_a_forked_pool_process(monkeypatch):
    shared = WorkerView()
    monkeypatch.setattr(worker_view, "current_process", lambda: SimpleNamespace(index=0))
    ready, done = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:
        with shared.running({"id": "e1:slow", "name": "slow"}):
            os.write(ready[1], b"x")
            os.read(done[0], 1)
        os._exit(0)
    os.read(ready[0], 1)
    running = shared.run_of(child)
    os.write(done[1], b"x")
    os.waitpid(child, 0)

    assert running == {"id": "e1:slow", "name": "slow"}
    assert shared.run_of(child) is None


def test_a_pool_process_clears_the_run_a_killed_one_left_in_its_slot(monkeypatch):
    shared = WorkerView()
    monkeypatch.setattr(worker_view, "current_process", lambda: SimpleNamespace(index=2))
    left = shared.running({"id": "e1:slow"})
    left.__enter__()  # killed in the run: never left it

    shared.forget_runs()

    assert shared.run_of(os.getpid()) is None


def test_the_main_process_sees_what_a_pool_process_runs_until_it_ends(monkeypatch):
    shared = WorkerView()
    monkeypatch.setattr(worker_view, "current_process", lambda: SimpleNamespace(index=1))
    info = {"id": "e1:slow", "name": "slow", "parent_id": "e1"}

    with shared.running(info):
        assert shared.run_of(os.getpid()) == info
        assert shared.run_of(os.getpid() + 1) is None
    assert shared.run_of(os.getpid()) is None


def test_outside_a_pool_nothing_is_said_to_run():
    shared = WorkerView()

    with shared.running({"id": "e1:slow"}):
        assert shared.run_of(os.getpid()) is None


def consumer(*, enabled: bool, groups: set[str], rate_limits: dict[str, Any]) -> Any:
    app = SimpleNamespace(
        tasks={name: SimpleNamespace(rate_limit=limit) for name, limit in rate_limits.items()}
    )
    return SimpleNamespace(
        event_dispatcher=SimpleNamespace(enabled=enabled, groups=groups), app=app
    )


@pytest.mark.parametrize(
    ("enabled", "groups", "events"),
    [(True, set(), True), (True, {"worker", "task"}, True), (True, {"worker"}, False),
     (False, set(), False)],
)  # fmt: skip
def test_task_events_are_on_when_the_main_process_sends_them(enabled, groups, events):
    view = main_view(consumer(enabled=enabled, groups=groups, rate_limits={}))

    assert view.events is events


def test_the_rate_limited_tasks_are_those_with_a_limit_now():
    limits = {"limited": "1/m", "free": None, "reset": "0", "reset_per_second": "0/s"}
    view = main_view(consumer(enabled=False, groups=set(), rate_limits=limits))

    assert view.rate_limited == {"limited"}


class Dispatcher:
    """Celery's event dispatcher, but for its connection: each event made as it makes them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, type_: str, **fields: Any) -> None:
        Event(type_, hostname="worker@host", utcoffset=0, pid=os.getpid(), clock=1, **fields)
        self.sent.append((type_, fields))


@pytest.fixture
def events() -> Any:
    shared = WorkerView()
    shared.write(View(events=True))
    task_events = TaskEvents(Celery(broker="memory://", set_as_current=False), shared)
    task_events._dispatcher, task_events._pid = Dispatcher(), os.getpid()
    return task_events


def test_a_run_in_dispatch_is_received_started_and_ended_as_celery_s_worker_says(events, caplog):
    events.received("e1:lone", "lone", "[<message e1>]", parent_id="e1", root_id="e1")
    events.ended("e1:lone", Traced(states.SUCCESS, retval=None, runtime=0.25))

    sent = events._dispatcher.sent
    assert "not sent" not in caplog.text
    assert [type_ for type_, _ in sent] == ["task-received", "task-started", "task-succeeded"]
    assert sent[0][1]["name"] == "lone"
    assert (sent[0][1]["parent_id"], sent[0][1]["retries"]) == ("e1", 0)
    assert sent[2][1] == {"uuid": "e1:lone", "result": "None", "runtime": 0.25}


@pytest.mark.parametrize(
    ("traced", "type_"),
    [
        (Traced(states.RETRY, Retry(exc=RuntimeError("boom"))), "task-retried"),
        (Traced(states.FAILURE, RuntimeError("boom")), "task-failed"),
        (Traced(states.REJECTED, Reject("no", requeue=True)), "task-rejected"),
    ],
)
def test_a_run_that_did_not_succeed_ends_with_the_event_of_its_state(events, traced, type_):
    events.ended("e1:lone", traced)

    [(sent, fields)] = events._dispatcher.sent
    assert sent == type_
    if type_ != "task-rejected":
        assert "boom" in fields["exception"]


def test_with_task_events_off_a_pool_process_sends_none(events):
    events.view.write(View(events=False))

    assert not events.on


def test_task_sent_is_sent_only_when_celery_would_send_it(events):
    events.sent("e1:lone", "lone", "[<message e1>]", "q", parent_id="e1", root_id="e1")
    events.app.conf.task_send_sent_event = True
    events.sent("e2:lone", "lone", "[<message e2>]", "q", parent_id="e2", root_id="e2")

    assert [fields["uuid"] for _, fields in events._dispatcher.sent] == ["e2:lone"]
