"""tasks.listeners.registry: ``@listener(..., ordered=True)`` runs through the order guard.

Each test has a Celery app, a Registry and an OrderGuard (in a fake Redis) of its own. A
listener's task is run with ``.run()``: outside a worker, or in a fake running task that
records what it sends back to the queue.
"""

import logging
from types import SimpleNamespace

import fakeredis
import pytest
from celery import signals

import tasks.listeners.registry
from notifier.errors import ListenerError
from notifier.errors import ObjectsBusy as Busy
from notifier.wire.message import decode, encode
from tasks.listeners.event import Event
from tasks.listeners.ordered import OrderGuard
from tasks.listeners.ordered_runs import OrderedRuns
from tasks.listeners.registry import Registry


class RecordingGuard(OrderGuard):
    """An OrderGuard that writes down how it was asked to claim."""

    def __init__(self, client):
        super().__init__(client, wait=0)
        self.claims = []

    def claim(self, listener, event, **options):
        self.claims.append((listener, options))
        return super().claim(listener, event, **options)


class RunningTask:
    """The task a worker is running, as the registry sees it (``current_task``): its request,
    and the copies of itself it sends back to the queue."""

    def __init__(self, task_id, message, retries=0, time_limit=None):
        self.request = SimpleNamespace(id=task_id, args=[message], kwargs={}, retries=retries)
        self.time_limit = time_limit
        self.sent = []

    def apply_async(self, **options):
        self.sent.append(options)


@pytest.fixture
def guard():
    return RecordingGuard(fakeredis.FakeRedis())


@pytest.fixture
def deferred():
    return []


@pytest.fixture
def registry(app, guard, deferred):
    return Registry(app, wrappers=[OrderedRuns(guard, on_defer=deferred.append)])


@pytest.fixture
def in_worker(monkeypatch):
    """Run the next listener task as a worker would: ``current_task`` is a RunningTask."""

    def running(task_id, message, **options):
        task = RunningTask(task_id, message, **options)
        monkeypatch.setattr(tasks.listeners.registry, "current_task", task)
        return task

    return running


def message(*records):
    """The message of an update of Kinto records in the collection c1 of the bucket b1."""
    payload = {
        "timestamp": 1000,
        "action": "update",
        "uri": "/buckets/b1/collections/c1/records",
        "user_id": "basicauth:alice",
        "resource_name": "record",
        "bucket_id": "b1",
        "collection_id": "c1",
    }
    changes = [{"new": record} for record in records]
    return encode(payload, changes, list(range(len(changes))), request_id="req-1").as_dict()


def collection_delete(collection_id, last_modified):
    payload = {
        "timestamp": last_modified,
        "action": "delete",
        "uri": f"/buckets/b1/collections/{collection_id}",
        "user_id": "basicauth:alice",
        "resource_name": "collection",
        "bucket_id": "b1",
        "collection_id": collection_id,
    }
    dead = {"id": collection_id, "last_modified": last_modified, "deleted": True}
    return encode(payload, [{"new": dead}], [0], request_id="req-2").as_dict()


def record(record_id, last_modified):
    return {"id": record_id, "last_modified": last_modified}


def event_of(data):
    return Event.from_message(decode(data))


def ids(event):
    return [change["new"]["id"] for change in event.impacted_records]


def len_of_records(event):
    return len(event.impacted_records)


@pytest.fixture
def received(registry):
    """The events an ordered listener of records, named ``ordered``, was called with."""
    events = []
    registry.listener("record", name="ordered", ordered=True, parents=("bucket", "collection"))(
        events.append
    )
    return events


def run(registry, data, name="ordered"):
    return registry[name].task.run(data)


def test_an_ordered_listener_receives_only_the_changes_newer_than_those_it_applied(
    registry, received
):
    run(registry, message(record("r1", 10), record("r2", 10)))

    run(registry, message(record("r1", 5), record("r2", 20)))

    assert [ids(event) for event in received] == [["r1", "r2"], ["r2"]]


def test_an_ordered_listener_receives_the_event_itself_when_every_change_is_new(registry, received):
    data = message(record("r1", 10))

    run(registry, data)

    (event,) = received
    assert isinstance(event, Event)
    assert event.event_id == data["event_id"]
    assert event.impacted_records == data["impacted_records"]


def test_an_ordered_listener_is_not_called_when_every_change_is_old(registry, received, caplog):
    data = message(record("r1", 10))
    run(registry, data)

    with caplog.at_level(logging.INFO, logger="notifier"):
        assert run(registry, data) is None

    assert len(received) == 1
    assert f"ordered: event {data['event_id']} skipped: no change newer than applied" in caplog.text


def test_what_an_ordered_listener_returns_is_its_tasks_result(registry):
    registry.listener("record", name="counts", ordered=True)(len_of_records)

    assert run(registry, message(record("r1", 1), record("r2", 1)), name="counts") == 2


def test_a_failed_ordered_listener_records_nothing_so_that_its_retry_applies(registry):
    calls = []

    def flaky(event):
        calls.append(ids(event))
        if len(calls) == 1:
            raise ConnectionError("the search server is down")

    registry.listener("record", name="flaky", ordered=True)(flaky)
    data = message(record("r1", 10))

    with pytest.raises(ConnectionError):
        run(registry, data, name="flaky")
    run(registry, data, name="flaky")

    assert calls == [["r1"], ["r1"]]


def test_an_ordered_listener_receives_a_parent_delete_and_then_skips_older_changes_under_it(
    registry, received
):
    run(registry, collection_delete("c1", 50))
    run(registry, message(record("r1", 40)))
    run(registry, message(record("r1", 60)))

    assert [(event.resource_name, ids(event)) for event in received] == [
        ("collection", ["c1"]),
        ("record", ["r1"]),
    ]
    assert received[1].impacted_records[0]["new"]["last_modified"] == 60


def test_a_listener_that_is_not_ordered_never_asks_the_guard(registry, guard):
    calls = []
    registry.listener("record", name="plain")(calls.append)
    data = message(record("r1", 10))

    run(registry, data, name="plain")
    run(registry, data, name="plain")

    assert len(calls) == 2
    assert guard.claims == []
    assert guard.client.keys() == []


def test_an_ordered_listener_of_a_registry_without_a_guard_fails_instead_of_running_unordered(
    app,
):
    calls = []
    unguarded = Registry(app)
    unguarded.listener("record", name="unguarded", ordered=True)(calls.append)

    with pytest.raises(ListenerError, match="unguarded is ordered, and its registry has no"):
        unguarded["unguarded"].task.run(message(record("r1", 10)))

    assert calls == []


def test_an_ordered_listener_stacked_on_a_task_is_ordered_too(registry, app):
    calls = []

    @registry.listener("record", ordered=True)
    @app.task(name="stacked.ordered", shared=False)
    def stacked(event):
        calls.append(ids(event))

    data = message(record("r1", 10))
    stacked.run(data)
    stacked.run(data)

    assert calls == [["r1"]]


def test_each_run_in_a_worker_claims_as_a_run_of_its_own(registry, received, guard, in_worker):
    # Two deliveries of one task (a redelivery while the first still runs) take turns.
    data = message(record("r1", 10))
    in_worker("task-1", data)

    run(registry, data)

    (claim,) = guard.claims
    assert claim == ("ordered", {"parents": frozenset({"bucket", "collection"})})


def test_a_busy_run_in_a_worker_is_sent_back_to_the_listeners_queue_as_the_same_task(
    registry, received, guard, deferred, in_worker, caplog
):
    data = message(record("r1", 10))
    guard.claim("ordered", event_of(data))
    running = in_worker("task-1", data, retries=2)

    with caplog.at_level(logging.INFO, logger="notifier"):
        assert run(registry, data) is None

    assert received == []
    (sent,) = running.sent
    countdown = sent.pop("countdown")
    assert 0.5 <= countdown <= 2.0
    assert sent == {
        "args": [data],
        "kwargs": {},
        "task_id": "task-1",
        "queue": "notifier.listener.ordered",
        "retries": 2,
    }
    assert deferred == [running]
    assert "ordered: task task-1 sent back to notifier.listener.ordered" in caplog.text


def test_a_busy_run_goes_back_to_the_queue_the_listener_names(registry, guard, in_worker):
    registry.listener("record", name="queued", queue="indexing", ordered=True)(len_of_records)
    data = message(record("r1", 10))
    guard.claim("queued", event_of(data))
    running = in_worker("task-1", data)

    run(registry, data, name="queued")

    assert running.sent[0]["queue"] == "indexing"


def test_a_busy_direct_call_raises_busy(registry, received, guard, deferred):
    data = message(record("r1", 10))
    guard.claim("ordered", event_of(data))

    with pytest.raises(Busy):
        run(registry, data)

    assert received == []
    assert deferred == []


def test_a_deferred_run_applies_once_the_object_is_free(registry, received, guard, in_worker):
    data = message(record("r1", 10))
    holding = guard.claim("ordered", event_of(message(record("r1", 5))))
    in_worker("task-1", data)
    run(registry, data)

    guard.release(holding, applied=True)
    run(registry, data)

    assert [ids(event) for event in received] == [["r1"]]


def test_the_task_sent_back_to_the_queue_keeps_its_id_args_and_attempts(
    registry, received, guard, monkeypatch
):
    task = registry["ordered"].task
    data = message(record("r1", 10))
    guard.claim("ordered", event_of(data))
    published = []

    def record_published(headers=None, routing_key=None, body=None, **kwargs):
        published.append((headers, routing_key, body))

    task.push_request(id="task-1", args=[data], kwargs={}, retries=2)
    monkeypatch.setattr(tasks.listeners.registry, "current_task", task)
    signals.before_task_publish.connect(record_published)
    try:
        task.run(data)
    finally:
        signals.before_task_publish.disconnect(record_published)
        task.pop_request()

    ((headers, routing_key, body),) = published
    assert (headers["id"], headers["retries"], routing_key) == (
        "task-1",
        2,
        "notifier.listener.ordered",
    )
    assert headers["eta"] is not None
    assert body[0] == [data]
