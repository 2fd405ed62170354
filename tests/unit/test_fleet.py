"""tasks.fleet, tasks.dispatch.coverage and tasks.startup: no event is lost to the configuration of
one worker.

The fleet lives in fakeredis; the listener tasks that dispatch hands to other workers are
recorded instead of reaching a broker.
"""

import importlib
import logging
from types import SimpleNamespace

import fakeredis
import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from notifier.errors import ConfigurationError
from notifier.wire.message import decode
from notifier.wire.routing import RoutingTable
from tasks.announcing import AnnounceListeners, Announcer
from tasks.dead_letters import DeadLetters
from tasks.dispatch.coverage import VIEW_MAX_AGE, Coverage
from tasks.dispatch.delivery import Delivery
from tasks.dispatch.run import DispatchRun
from tasks.fleet import (
    Fleet,
    ListenerSpec,
    WorkerRecord,
    record_of,
    report,
)
from tasks.listeners.registry import Registry
from tasks.settings import WorkerSettings, dispatch_only
from tasks.startup import check_listeners
from tests.unit.builders import message
from tests.unit.test_dispatch import ignore

fleet_module = importlib.import_module("tasks.fleet")


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def dead_letters(client):
    return DeadLetters(client)


@pytest.fixture
def fleet(client):
    return Fleet(client)


@pytest.fixture
def handed(monkeypatch, registry):
    """The listener tasks dispatch sends by name, to other workers' listeners."""
    sent = []

    def send_task(name, args=None, task_id=None, queue=None, **options):
        sent.append({"task": name, "args": list(args), "task_id": task_id, "queue": queue})

    monkeypatch.setattr(registry.app, "send_task", send_task)
    return sent


def other_worker(hostname="other@host", *names, queues=None, dispatch_queues=("notifier",)):
    """The record of a worker that knows listeners of articles named ``names``."""
    other = Registry(Celery(hostname, broker="memory://", set_as_current=False))
    for name in names:
        other.listener("article", name=name)(ignore)
    own_queues = {listener.queue for listener in other}
    return record_of(
        hostname, set(dispatch_queues) | (own_queues if queues is None else set(queues)), other, ()
    )


@pytest.fixture
def coverage(registry, dead_letters, fleet):
    """The coverage of a worker of ``registry``, whose fleet is beside its dead letters."""
    return Coverage(fleet, registry, dead_letters)


@pytest.fixture
def handle(registry, dead_letters, coverage):
    """Handle a message as the dispatch task of a worker of ``registry`` does."""

    def handling(data, only=None):
        run = DispatchRun(registry, dead_letters, "notifier", coverage=coverage)
        return run.handle(Delivery(data, only, retries=0, redelivered=False, task_id="t1"))

    return handling


# -- refusing to start ---------------------------------------------------------------------------


def test_a_worker_that_knows_no_listener_refuses_to_start_naming_notifier_listeners(registry):
    with pytest.raises(ConfigurationError) as refused:
        check_listeners(registry, only_dispatches=False, environ={})

    assert refused.value.key == "NOTIFIER_LISTENERS"
    assert "this worker knows no listener" in str(refused.value)
    assert "NOTIFIER_DISPATCH_ONLY=true" in str(refused.value)


def test_the_refusal_points_at_a_misspelt_notifier_listeners(registry):
    with pytest.raises(ConfigurationError, match="NOTIFIER_LISTENER is set: did you mean"):
        check_listeners(registry, only_dispatches=False, environ={"NOTIFIER_LISTENER": "mine"})


def test_listener_modules_that_register_no_listener_are_named_in_the_refusal(registry):
    with pytest.raises(ConfigurationError) as refused:
        check_listeners(registry, only_dispatches=False, environ={"NOTIFIER_LISTENERS": "utils"})

    assert str(refused.value).startswith(
        "NOTIFIER_LISTENERS = 'utils' is not valid: its modules register no listener"
    )


def test_a_worker_meant_only_to_dispatch_starts_without_listeners(registry):
    check_listeners(registry, only_dispatches=True, environ={})


def test_a_worker_with_a_listener_starts(registry):
    registry.listener("article", name="search.index")(ignore)

    check_listeners(registry, only_dispatches=False, environ={})


def test_a_worker_that_knows_no_listener_stops_before_its_pool_with_the_error_on_one_line(
    monkeypatch, registry, caplog
):
    startup = importlib.import_module("tasks.startup")
    monkeypatch.setattr(startup, "registry", registry)
    monkeypatch.delenv("NOTIFIER_LISTENERS", raising=False)
    # The settings as the first step of the worker's start checked them (tasks.settings).
    settings = WorkerSettings(
        RoutingTable.parse(""), "redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0", 30
    )
    monkeypatch.setattr(startup.app, "notifier_settings", settings, raising=False)
    worker = SimpleNamespace(app=startup.app, hostname="w1@host")

    with pytest.raises(SystemExit) as stopped, caplog.at_level(logging.CRITICAL, "notifier"):
        startup._check_at_start(instance=worker)

    assert stopped.value.code == 1
    [line] = caplog.records
    assert line.getMessage().startswith(
        "worker w1@host refuses to start: ConfigurationError: NOTIFIER_LISTENERS = '' is not valid"
    )
    assert line.exc_info is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("YES", True), ("1", True), ("false", False), ("", False)],
)
def test_notifier_dispatch_only_reads_true_and_false(value, expected):
    assert dispatch_only({"notifier_dispatch_only": value}) is expected


def test_a_bad_notifier_dispatch_only_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="NOTIFIER_DISPATCH_ONLY = 'maybe' is not valid"):
        dispatch_only({"notifier_dispatch_only": "maybe"})


# -- the fleet -----------------------------------------------------------------------------------


def test_a_worker_announces_its_queues_and_each_listeners_matching_spec(registry, fleet):
    registry.listener(
        "record", actions=("create",), where={"bucket_id": "blog"}, parents=("bucket",)
    )(ignore)
    record = record_of("w1@host", ["notifier", "updates"], registry, ["notifier"])

    fleet.announce(record)

    [live] = fleet.live()
    assert live.hostname == "w1@host"
    assert live.queues == {"notifier", "updates"}
    assert live.dispatch_queues == {"notifier", "updates"}
    [spec] = live.listeners
    assert spec == ListenerSpec.of(next(iter(registry)))
    assert spec.where == {"bucket_id": frozenset({"blog"})}
    assert spec.parents == {"bucket"}
    assert spec.task == spec.name == "tests.unit.test_dispatch.ignore"


def test_a_listeners_own_queue_is_not_a_dispatch_queue(registry):
    registry.listener("article", name="search.index")(ignore)

    record = record_of("w1@host", ["notifier", "notifier.listener.search.index"], registry, [])

    assert record.dispatch_queues == {"notifier"}


def test_a_worker_that_stopped_announcing_leaves_the_fleet_after_the_ttl(client):
    clock = Clock()
    fleet = Fleet(client, ttl=30, clock=clock)
    fleet.announce(other_worker("old@host", "a.listener"))
    clock.now += 20
    fleet.announce(other_worker("new@host", "b.listener"))
    clock.now += 15

    assert [record.hostname for record in fleet.live()] == ["new@host"]
    assert client.hkeys("notifier:fleet") == [b"new@host"]
    assert 0 < client.ttl("notifier:fleet") <= 61


def test_a_worker_that_stops_takes_its_record_away(fleet):
    fleet.announce(other_worker("w1@host", "a.listener"))

    fleet.leave("w1@host")

    assert fleet.live() == []


def test_an_unreadable_record_is_dropped(client, fleet):
    client.hset("notifier:fleet", "broken@host", "{not json")

    assert fleet.live() == []
    assert client.hlen("notifier:fleet") == 0


def test_a_peers_listener_wants_what_the_registry_would_have_it_want(registry):
    registry.listener("record", where={"collection_id": ["posts"]}, parents=("bucket",))(ignore)
    [listener] = registry
    spec = ListenerSpec.from_dict(ListenerSpec.of(listener).as_dict())
    messages = [
        message("record", "create"),
        message("record", "read"),
        message("comment", "create"),
        message("bucket", "delete"),
        message("bucket", "update"),
    ]
    for data in messages:
        data["payload"]["collection_id"] = "posts"
    other = message("record", "create")
    other["payload"]["collection_id"] = "pages"

    for data in [*messages, other]:
        assert spec.wants(decode(data)) is listener.wants(decode(data))
    assert [spec.wants(decode(data)) for data in [*messages, other]] == [
        True, False, False, True, False, False
    ]  # fmt: skip


# -- the mismatch report ---------------------------------------------------------------------------


def test_workers_consuming_the_same_queues_with_different_listeners_are_reported():
    me = other_worker("me@host", "search.index", "mail.send")
    them = other_worker("them@host", "search.index", "audit.log")

    lines = report(me, [me, them])

    assert lines == [
        (
            logging.ERROR,
            "this worker (me@host) lacks listeners that other workers consuming its queues "
            "know: audit.log (known by them@host); it hands the events they want to their "
            "queues, but load the same listeners (NOTIFIER_LISTENERS) in every worker",
        ),
        (
            logging.ERROR,
            "worker them@host consumes notifier as this worker (me@host) does, but lacks the "
            "listeners mail.send: the events it takes are handed to their queues while this "
            "worker lives; load the same listeners (NOTIFIER_LISTENERS) in every worker",
        ),
    ]


def test_workers_with_the_same_listeners_report_nothing():
    me = other_worker("me@host", "search.index")

    assert report(me, [me, other_worker("them@host", "search.index")]) == []


def test_workers_that_take_other_dispatch_queues_are_not_compared():
    me = other_worker("me@host", "search.index")
    them = other_worker("them@host", "audit.log", dispatch_queues=("comments",))

    assert report(me, [me, them]) == []


def test_a_dispatch_only_worker_says_whose_listeners_it_dispatches_to():
    me = WorkerRecord("me@host", frozenset({"notifier"}), frozenset({"notifier"}), (), True)
    listening = other_worker("them@host", "search.index", dispatch_queues=())

    assert report(me, [me, listening]) == [
        (
            logging.INFO,
            "this worker (me@host) only dispatches: it hands each event to the listeners of "
            "the live workers (search.index)",
        )
    ]
    assert report(other_worker("peer@host", "search.index"), [me]) == []


def test_the_announcer_logs_each_mismatch_once_while_it_holds(fleet, caplog):
    me = other_worker("me@host", "search.index")
    fleet.announce(other_worker("them@host", "search.index", "audit.log"))
    announcer = Announcer(fleet, me)

    with caplog.at_level(logging.INFO, logger="notifier"):
        announcer.announce()
        announcer.announce()

    [logged] = [r for r in caplog.records if "lacks listeners" in r.getMessage()]
    assert logged.levelno == logging.ERROR
    assert "audit.log (known by them@host)" in logged.getMessage()
    assert "me@host" in [record.hostname for record in fleet.live()]


def test_an_announcer_whose_redis_is_away_warns_and_goes_on(caplog):
    server = fakeredis.FakeServer()
    server.connected = False
    announcer = Announcer(Fleet(fakeredis.FakeRedis(server=server)), other_worker("me@host", "x"))

    with caplog.at_level(logging.WARNING, logger="notifier"):
        announcer.announce()

    assert "could not announce this worker's listeners to the fleet" in caplog.text


def test_the_consumer_step_announces_at_start_and_again_on_the_workers_timer(monkeypatch, fleet):
    urls = []
    monkeypatch.setattr(
        fleet_module.Fleet, "from_url", classmethod(lambda cls, url: urls.append(url) or fleet)
    )
    timer = Timer()
    consumer = SimpleNamespace(
        app=SimpleNamespace(
            conf=Conf(notifier_dead_letters_url="redis://dead-letters:1/0"),
            notifier_settings=WorkerSettings(
                RoutingTable.parse(""), "redis://dead-letters:1/0", "redis://order:1/0", 30
            ),
        ),
        hostname="w1@host",
        task_consumer=SimpleNamespace(queues=[SimpleNamespace(name="notifier")]),
        timer=timer,
    )
    step = AnnounceListeners(consumer)

    step.start(consumer)

    assert urls == ["redis://dead-letters:1/0"]
    [live] = fleet.live()
    assert (live.hostname, live.queues) == ("w1@host", {"notifier"})
    [(every, announce)] = timer.repeated
    assert every == fleet_module.FLEET_TTL / 3
    fleet.leave("w1@host")
    announce()
    assert [record.hostname for record in fleet.live()] == ["w1@host"]
    step.shutdown(consumer)
    assert timer.repeated == []
    assert fleet.live() == []


class Conf(dict):
    """A Celery configuration: its settings as keys and as attributes."""

    __getattr__ = dict.__getitem__


class Timer:
    """The worker's timer: keeps what it is asked to call repeatedly."""

    def __init__(self):
        self.repeated = []

    def call_repeatedly(self, every, call):
        self.repeated.append((every, call))
        return SimpleNamespace(cancel=self.repeated.clear)


# -- dispatch: the listeners other workers know ---------------------------------------------------


def test_dispatch_hands_a_message_to_a_listener_only_another_worker_knows(
    registry, dead_letters, fleet, handed, sent_locally, caplog, handle
):
    registry.listener("article", name="search.index")(ignore)
    fleet.announce(other_worker("them@host", "search.index", "audit.log"))
    data = message()

    with caplog.at_level(logging.ERROR, logger="notifier"):
        names = handle(data)

    assert sorted(names) == ["audit.log", "search.index"]
    assert handed == [
        {
            "task": "audit.log",
            "args": [decode(data).as_dict()],
            "task_id": f"{data['event_id']}:audit.log",
            "queue": "notifier.listener.audit.log",
        }
    ]
    assert sent_locally == ["search.index"]
    assert len(dead_letters) == 0
    assert (
        f"event {data['event_id']}: listener audit.log, known by worker(s) them@host, is not "
        "loaded in this worker: sent to its queue notifier.listener.audit.log"
    ) in caplog.text


def test_dispatch_keeps_a_dead_letter_naming_a_listener_no_worker_consumes_the_queue_of(
    registry, dead_letters, fleet, handed, sent_locally, caplog, handle
):
    registry.listener("article", name="search.index")(ignore)
    fleet.announce(other_worker("them@host", "audit.log", queues=["notifier"]))
    data = message()

    with caplog.at_level(logging.ERROR, logger="notifier"):
        handle(data)

    assert handed == []
    (letter,) = dead_letters
    assert letter.listener == "audit.log"
    assert letter.reason == (
        "listener audit.log, known by worker(s) them@host, is not loaded in this worker, and "
        "none of them consumes its queue notifier.listener.audit.log"
    )
    assert letter.message == data
    assert letter.queue == "notifier"
    assert f"event {data['event_id']}: " in caplog.text
    assert f"kept as dead letter {letter.id}" in caplog.text
    assert sent_locally == ["search.index"]


def test_a_listener_whose_queue_does_not_take_its_task_keeps_the_message_as_a_dead_letter(
    monkeypatch, registry, dead_letters, fleet, sent_locally, handle
):
    registry.listener("article", name="search.index")(ignore)
    fleet.announce(other_worker("them@host", "audit.log"))

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to the broker")

    monkeypatch.setattr(registry.app, "send_task", refuse)

    handle(message())

    (letter,) = dead_letters
    assert letter.listener == "audit.log"
    assert letter.reason.startswith("listener audit.log, known by worker(s) them@host, is not")
    assert "did not take its task: Error 111" in letter.reason


def test_a_worker_without_listeners_hands_every_message_over(
    registry, dead_letters, fleet, handed, handle
):
    fleet.announce(other_worker("them@host", "search.index"))

    assert handle(message()) == ["search.index"]
    assert [sending["task"] for sending in handed] == ["search.index"]


def test_a_retry_for_some_listeners_is_not_handed_over_again(
    registry, dead_letters, fleet, handed, sent_locally, handle
):
    registry.listener("article", name="search.index")(ignore)
    fleet.announce(other_worker("them@host", "search.index", "audit.log"))

    handle(message(), only=["search.index"])

    assert handed == []
    assert sent_locally == ["search.index"]


def test_a_message_no_listener_anywhere_wants_is_counted_and_logged_once_per_resource_and_action(
    registry, dead_letters, fleet, handed, caplog, handle, coverage
):
    registry.listener("comment", name="comments.moderate")(ignore)
    fleet.announce(other_worker("them@host", "search.index"))  # articles only
    first = message("blog", "create")

    with caplog.at_level(logging.WARNING, logger="notifier"):
        for data in [first, message("blog", "create"), message("blog", "delete")]:
            assert handle(data) == []

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0] == (
        f"no listener of any live worker wants create events of blog (event "
        f"{first['event_id']}): such messages are acknowledged without reaching any listener; "
        "logged once per resource and action"
    )
    assert "no listener of any live worker wants delete events of blog" in warnings[1]
    counted = coverage.unwanted
    assert counted == {("blog", "create"): 2, ("blog", "delete"): 1}
    assert handed == []


def test_the_fleet_is_read_again_once_what_dispatch_read_is_older_than_its_max_age(
    registry, dead_letters, fleet
):
    clock = Clock(0.0)
    sent = []
    coverage = Coverage(
        fleet, registry, dead_letters, lambda spec, m: sent.append(spec.name), clock=clock
    )
    coverage.cover(decode(message()), message(), [], "notifier")
    fleet.announce(other_worker("late@host", "audit.log"))

    coverage.cover(decode(message()), message(), [], "notifier")
    clock.now += VIEW_MAX_AGE
    coverage.cover(decode(message()), message(), [], "notifier")

    assert sent == ["audit.log"]


@pytest.fixture
def sent_locally(monkeypatch, registry):
    """Register the test's local listeners first; the names of their tasks sent, in order."""
    names = []

    def watch(listener):
        def apply_async(args=None, task_id=None, **options):
            names.append(listener.name)

        return apply_async

    original = registry.listener

    def listener(*args, **kwargs):
        register = original(*args, **kwargs)

        def apply(function):
            result = register(function)
            for each in registry:
                monkeypatch.setattr(each.task, "apply_async", watch(each))
            return result

        return apply

    monkeypatch.setattr(registry, "listener", listener)
    return names
