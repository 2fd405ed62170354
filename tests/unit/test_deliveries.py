"""tasks.dispatch.bound: a listener whose whole worker dies each time is stopped, and the Redis
it counts in holds only what is in flight.

A delivery is the task's attempt plus the redeliveries of its message: a first delivery costs
nothing in Redis, a redelivery is counted until its message's run ends (Celery's task_postrun
and task_failure signals, sent here as a worker sends them).
"""

import logging
from types import SimpleNamespace

import fakeredis
import pytest
import redis
from celery import Celery, signals, states
from celery.exceptions import Reject

from notifier.errors import ObjectsBusy
from notifier.wire.routing import RoutingTable
from tasks.dead_letters import DeadLetters, cli
from tasks.listeners.ordered import OrderGuard
from tasks.listeners.ordered_runs import OrderedRuns
from tasks.listeners.registry import Registry
from tasks.settings import WorkerSettings
from tasks.wiring import bind, collaborators, wire
from tests.unit.builders import message

LISTENER = "search.index"


@pytest.fixture(autouse=True)
def a_listener_of_the_worker(registry):
    """The worker's registry knows the listener of the tasks below, as a worker's would."""
    registry.listener("article", name=LISTENER)(ignore)


@pytest.fixture
def worker(registry, dead_letters, order_guard, monkeypatch):
    """Wire the test's registry with dead letters of the test's choice (default: the
    ``dead_letters`` fixture's), as a worker's; the tasks below run in its app."""

    def wired_with(store=dead_letters):
        built = collaborators(registry, store, order_guard)
        bind(registry.app, built)
        monkeypatch.setattr(RunningTask, "app", registry.app, raising=False)
        return built.bound

    return wired_with


@pytest.fixture
def bound(worker):
    """The bound on deliveries of the wired worker, its dead letters the fixture's."""
    return worker()


class RunningTask:
    """The listener task a worker runs: its request as Celery fills it."""

    name = LISTENER

    def __init__(self, task_id, max_retries, retries, redelivered, headers):
        self.max_retries = max_retries
        self.request = SimpleNamespace(
            id=task_id,
            retries=retries,
            delivery_info={"routing_key": "q", "redelivered": redelivered},
            headers=headers,
        )


def running(task_id="e1:search.index", max_retries=2, retries=0, redelivered=False, headers=None):
    return RunningTask(task_id, max_retries, retries, redelivered, headers)


def end(task, state=states.SUCCESS, retval=None):
    """What a worker sends once the task's run is over."""
    if state == states.FAILURE:
        signals.task_failure.send(
            sender=task, task_id=task.request.id, exception=RuntimeError("boom"), args=[{}]
        )
    signals.task_postrun.send(
        sender=task, task_id=task.request.id, task=task, state=state, retval=retval
    )


def ignore(event):
    return None


class NoRedis:
    """A Redis client that fails the test when it is used at all."""

    def __getattr__(self, name):
        raise AssertionError(f"Redis used: {name}")


def test_a_successful_first_delivery_reads_and_writes_nothing_in_redis(worker):
    store = DeadLetters(NoRedis())
    bound = worker(store)
    task = running()

    assert bound.within(task, {"event_id": "e1"})
    end(task)


def test_a_redelivery_is_counted_until_its_run_ends(dead_letters, bound):
    task = running(redelivered=True)

    assert bound.within(task, {"event_id": "e1"})

    assert dead_letters.redeliveries("e1:search.index") == 1
    [key] = dead_letters.client.keys()
    assert key == b"notifier:dead_letters:redeliveries:e1:search.index"
    assert 0 < dead_letters.client.ttl(key) <= 7 * 24 * 3600
    end(task)
    assert dead_letters.client.keys() == []


@pytest.mark.parametrize(
    ("state", "retval"),
    [
        (states.SUCCESS, None),
        (states.FAILURE, None),
        (states.IGNORED, None),
        (states.REJECTED, Reject("bad", requeue=False)),
    ],
    ids=["success", "final-failure", "ignored", "rejected"],
)
def test_the_count_ends_with_the_run_whatever_its_end(dead_letters, state, retval, bound):
    task = running(redelivered=True)
    bound.within(task, {"event_id": "e1"})

    end(task, state, retval)

    assert dead_letters.redeliveries("e1:search.index") == 0


@pytest.mark.parametrize(
    ("state", "retval"),
    [(states.RETRY, None), (states.REJECTED, Reject("again", requeue=True))],
    ids=["retried", "requeued"],
)
def test_a_message_that_goes_on_keeps_its_count(dead_letters, state, retval, bound):
    task = running(redelivered=True)
    bound.within(task, {"event_id": "e1"})

    end(task, state, retval)

    assert dead_letters.redeliveries("e1:search.index") == 1


def test_a_listener_runs_while_its_deliveries_stay_within_its_attempts_and_one_more(
    dead_letters,
    bound,
):
    first = running(max_retries=2)
    redelivered = running(max_retries=2, redelivered=True)

    runs = [bound.within(first, {"event_id": "e1"})]
    runs += [bound.within(redelivered, {"event_id": "e1"}) for _ in range(4)]

    assert runs == [True, True, True, True, False]
    (letter,) = dead_letters
    assert letter.reason == "delivered 5 times without finishing: its worker died each time"
    assert letter.message == {"event_id": "e1"}
    assert letter.listener == LISTENER
    assert letter.attempts == 4
    assert dead_letters.redeliveries("e1:search.index") == 0  # it ended as a dead letter


def test_retries_and_redeliveries_count_against_the_same_bound(dead_letters, bound):
    # max_retries=2 and one extra delivery: four deliveries, whichever way they come.
    deliveries = [
        running(retries=0),  # 1: its worker dies
        running(retries=0, redelivered=True),  # 2: fails, retried
        running(retries=1),  # 3: its worker dies
        running(retries=1, redelivered=True),  # 4: fails, retried
        running(retries=2),  # 5: one too many
    ]

    runs = [bound.within(task, {"event_id": "e1"}) for task in deliveries]

    assert runs == [True, True, True, True, False]
    (letter,) = dead_letters
    assert letter.reason == "delivered 5 times without finishing: its worker died each time"


def test_each_message_has_its_own_count(dead_letters, bound):
    for task_id in ("e1:a", "e2:a", "e3:a"):
        assert bound.within(running(task_id, max_retries=0, redelivered=True), {})

    assert [dead_letters.redeliveries(task_id) for task_id in ("e1:a", "e2:a", "e3:a")] == [1, 1, 1]


def test_a_listener_called_directly_is_not_counted(dead_letters, bound):
    task = SimpleNamespace(name="x", max_retries=0, request=SimpleNamespace(id=None))

    assert all(bound.within(task, {}) for _ in range(5))
    assert len(dead_letters) == 0


def test_the_count_of_a_task_that_is_no_listener_is_left_alone(worker):
    worker(DeadLetters(NoRedis()))
    task = running(redelivered=True)
    task.name = "notifier.dispatch"  # its dispatch task, say

    end(task)


class UnreachableRedis(fakeredis.FakeRedis):
    def pipeline(self, *args, **kwargs):
        raise redis.ConnectionError("Connection refused")


def test_a_failed_listeners_message_is_logged_whole_when_the_dead_letters_are_out_of_reach(
    caplog, registry, worker
):
    worker(DeadLetters(UnreachableRedis()))
    registry.listener("article", name="tests.unreachable")(ignore)

    class FailedTask:
        name = "tests.unreachable"
        app = registry.app
        request = SimpleNamespace(retries=0, delivery_info={"routing_key": "q"})

    task = FailedTask()

    with caplog.at_level(logging.CRITICAL, logger="notifier"):
        signals.task_failure.send(
            sender=task, exception=RuntimeError("boom"), args=[{"event_id": "e9"}], kwargs={}
        )

    assert 'the dead letters are out of reach; its message: {"event_id": "e9"}' in caplog.text


def test_a_first_delivery_sent_back_to_its_queue_unrun_carries_nothing(worker):
    store = DeadLetters(NoRedis())
    bound = worker(store)

    assert bound.forget(running()) == {}


def test_a_redelivery_sent_back_to_its_queue_unrun_carries_its_count_in_the_task_sent_back(
    dead_letters,
    bound,
):
    # An ordered listener whose objects were busy goes back to its queue: not an attempt.
    redelivered = running(max_retries=0, redelivered=True)
    assert bound.within(redelivered, {"event_id": "e1"})

    headers = bound.forget(redelivered)
    end(redelivered)  # the run that sent it back is over

    assert headers == {"notifier_redeliveries": 1}
    assert dead_letters.client.keys() == []
    sent_back = running(max_retries=0, headers=headers)
    assert bound.within(sent_back, {"event_id": "e1"})  # its second run


def test_a_message_whose_worker_dies_each_time_ends_in_the_dead_letters_though_sent_back(
    dead_letters,
    bound,
):
    # Each redelivery finds its objects still claimed by the dead worker and goes back to the
    # queue; the task sent back runs, and its worker dies again.
    headers = None
    runs = []
    for _ in range(3):
        runs.append(bound.within(running(max_retries=0, headers=headers), {}))
        redelivered = running(max_retries=0, redelivered=True, headers=headers)
        if not bound.within(redelivered, {}):
            break
        headers = bound.forget(redelivered)
        end(redelivered)

    assert runs == [True, True]
    (letter,) = dead_letters
    assert letter.reason == "delivered 3 times without finishing: its worker died each time"


class RedisOutOfReach(fakeredis.FakeRedis):
    """A fake Redis that can be cut off: reads and deletes fail, as on a lost connection."""

    reachable = True

    def get(self, *args, **kwargs):
        if not self.reachable:
            raise redis.ConnectionError("Connection refused")
        return super().get(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if not self.reachable:
            raise redis.ConnectionError("Connection refused")
        return super().delete(*args, **kwargs)


def test_a_delivery_stays_counted_when_redis_is_out_of_reach(caplog, worker):
    client = RedisOutOfReach()
    store = DeadLetters(client)
    bound = worker(store)
    redelivered = running(redelivered=True)
    bound.within(redelivered, {"event_id": "e1"})

    client.reachable = False
    headers = bound.forget(redelivered)
    with caplog.at_level(logging.WARNING, logger="notifier"):
        end(redelivered)
    client.reachable = True

    assert headers == {}
    assert "could not delete the redelivery count of e1:search.index" in caplog.text
    assert store.redeliveries("e1:search.index") == 1
    # The task sent back, handed out again, counts on from there.
    bound.within(running(redelivered=True), {"event_id": "e1"})
    assert store.redeliveries("e1:search.index") == 2
    # What a user sees: the outage took no delivery off the bound. With max_retries=2 (four
    # deliveries), the message whose worker keeps dying ends in the dead letters on its fifth.
    runs = [bound.within(running(redelivered=True), {"event_id": "e1"}) for _ in range(2)]
    assert runs == [True, False]
    (letter,) = store
    assert letter.reason == "delivered 5 times without finishing: its worker died each time"
    assert letter.listener == LISTENER


def test_a_replayed_dead_letter_runs_with_all_its_attempts(
    dead_letters,
    monkeypatch,
    capsys,
    bound,
):
    registry = Registry(Celery("replay-tests", broker="memory://", set_as_current=False))
    registry.listener("article", name=LISTENER, max_retries=2)(ignore)
    task = registry[LISTENER].task
    sent = []
    monkeypatch.setattr(task, "apply_async", lambda **options: sent.append(options))
    monkeypatch.setattr(cli, "registry", registry)
    monkeypatch.setattr(cli, "open_store", lambda: dead_letters)
    data = message()
    task_id = f"{data['event_id']}:{LISTENER}"
    # Its first run: three redeliveries whose ends were never seen (Redis out of reach then).
    for _ in range(3):
        bound.within(running(task_id, redelivered=True), data)
    letter = dead_letters.add("RuntimeError: boom", data, listener=LISTENER, attempts=3)

    assert cli.main(["replay", letter.id]) == 0

    [replayed] = sent
    assert replayed["task_id"] == task_id
    attempts = [running(task_id, max_retries=2, retries=retries) for retries in range(3)]
    assert [bound.within(attempt, data) for attempt in attempts] == [
        True,
        True,
        True,
    ]
    assert [letter.id for letter in dead_letters] == []


class BusyGuard(OrderGuard):
    """An order guard whose objects are always held by another run."""

    def claim(self, *args, **kwargs):
        raise ObjectsBusy("held by another run")


class Deferring:
    """An ordered listener's running task whose objects are busy: what it sends back."""

    def __init__(self):
        self.request = SimpleNamespace(id="e1:ordered", args=[{}], kwargs={}, retries=1)
        self.sent = []

    def apply_async(self, **options):
        self.sent.append(options)


def test_the_task_sent_back_to_its_queue_carries_the_headers_the_registry_is_given(monkeypatch):
    guard = BusyGuard(fakeredis.FakeRedis(), wait=0)
    registry = Registry(
        Celery("defer-tests", broker="memory://", set_as_current=False),
        wrappers=[OrderedRuns(guard, on_defer=lambda task: {"notifier_redeliveries": 2})],
    )
    registry.listener("record", name="ordered", ordered=True)(ignore)
    data = message("record", "update", ids=("r1",))
    task = Deferring()
    monkeypatch.setattr("tasks.listeners.registry.current_task", task)

    registry["ordered"].task.run(data)

    [sent] = task.sent
    assert sent["headers"] == {"notifier_redeliveries": 2}
    assert (sent["task_id"], sent["retries"]) == ("e1:ordered", 1)


def test_the_workers_registry_times_orders_listeners_and_carries_their_deferred_counts(
    app, registry
):
    # The settings as a worker's start checked them (tasks.settings.configure); the URLs are
    # parsed, never connected to.
    app.notifier_settings = WorkerSettings(
        RoutingTable.parse(""), "redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1", 30
    )

    built = wire(app, registry)

    pace, bound, ordered = registry.wrappers
    assert pace is built.pace
    assert ordered.guard is built.order_guard
    assert ordered.on_defer == bound.forget
    assert bound is built.bound
    assert bound.dead_letters is built.dead_letters
