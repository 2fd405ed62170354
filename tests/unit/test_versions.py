"""The gate on Celery's and kombu's versions: each shortcut into their internals runs on the
versions it was checked on, and on any other the worker runs their stock paths, and says so
once."""

import logging
from types import SimpleNamespace

import fakeredis
import kombu
import pytest
from celery import Celery, current_task, signals
from kombu.transport import redis as kombu_redis

from tasks.broker import internals_checked, versions
from tasks.broker.consumer import Consumer, _CheckingChannel
from tasks.broker.consuming import AtomicChannel
from tasks.broker.taking import taker_of
from tasks.broker.tracing import trace
from tasks.broker.visibility import KeepDeliveriesVisible

UNCHECKED = {"celery": "5.8.0", "kombu": "5.7.0"}


@pytest.fixture(autouse=True)
def warned_afresh():
    """Each test starts as a process that has not warned yet."""
    versions._warn.cache_clear()
    yield
    versions._warn.cache_clear()


@pytest.fixture
def unchecked(monkeypatch):
    """A Celery whose internals were not checked, as an install past the bounds has."""
    monkeypatch.setattr(versions, "installed_versions", lambda: dict(UNCHECKED))


@pytest.fixture
def fake_redis_channels(monkeypatch):
    """kombu's Redis channels connect to one fake Redis (which runs Lua scripts)."""
    server = fakeredis.FakeServer()

    class Connection(fakeredis.FakeRedisConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, server=server, **kwargs)

    monkeypatch.setattr(kombu_redis.Channel, "connection_class", Connection)


def gate_warnings(caplog):
    return [
        record
        for record in caplog.records
        if record.name == "notifier" and record.levelno == logging.WARNING
    ]


def redis_app(**conf):
    app = Celery("versions", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.update(conf)
    return app


def channel_of(connection):
    channel = connection.channel()
    try:
        return channel
    finally:
        connection.release()


def consumer_reading(app):
    # The one part of Celery's consumer that connection_for_read uses, as the worker makes it.
    consumer = Consumer.__new__(Consumer)
    consumer.app = app
    consumer.internals_checked = internals_checked()
    consumer.ensure_connected = lambda connection: connection
    return consumer


class RecordingTimer:
    def __init__(self):
        self.calls = []

    def call_repeatedly(self, seconds, function, args=()):
        self.calls.append((seconds, function, args))
        return SimpleNamespace(cancel=lambda: None)


def visibility_consumer(app):
    return SimpleNamespace(app=app, timer=RecordingTimer())


# The installed versions: every shortcut is on. -----------------------------------------------


def test_the_installed_celery_and_kombu_are_checked_versions(caplog):
    assert internals_checked()
    assert gate_warnings(caplog) == []


def test_the_checked_versions_are_the_installed_minor_versions():
    installed = versions.installed_versions()

    for name, checked in versions.CHECKED.items():
        assert ".".join(installed[name].split(".")[:2]) in checked


def test_on_checked_versions_the_consumer_takes_with_its_own_channel():
    connection = consumer_reading(redis_app()).connection_for_read()

    assert issubclass(connection.transport.Channel, _CheckingChannel)


def test_on_checked_versions_the_channel_takes_atomically(fake_redis_channels):
    connection = kombu.Connection("redis://127.0.0.1:6399/0", transport_options={})
    connection.transport.Channel = AtomicChannel
    channel = channel_of(connection)

    assert channel._atomic
    assert "BRPOP" in channel.client.response_callbacks
    assert channel.client.response_callbacks["BRPOP"] == channel._checked_reply


def test_on_checked_versions_dispatch_has_a_taker():
    assert taker_of(redis_app()) is not None


def test_on_checked_versions_the_held_messages_are_refreshed():
    consumer = visibility_consumer(redis_app(broker_transport_options={"visibility_timeout": 9}))

    KeepDeliveriesVisible(consumer).start(consumer)

    assert [seconds for seconds, _, _ in consumer.timer.calls] == [3]


# An unchecked version: every shortcut is off, and the worker says so once. ---------------------


def test_an_unchecked_celery_or_kombu_is_not_checked(unchecked, caplog):
    assert not internals_checked()


@pytest.mark.parametrize(
    "found",
    [{"celery": "5.8.0", "kombu": "5.7.0"}, {"celery": "5.7.0", "kombu": "5.6.2"}],
    ids=["celery", "kombu"],
)
def test_either_one_unchecked_turns_the_shortcuts_off(monkeypatch, found):
    monkeypatch.setattr(versions, "installed_versions", lambda: dict(found))

    assert not internals_checked()


def test_an_unchecked_version_is_logged_once_naming_the_versions(unchecked, caplog):
    for _ in range(3):
        internals_checked()

    [warning] = gate_warnings(caplog)
    assert "celery 5.8.0, kombu 5.7.0" in warning.getMessage()
    assert "checked on celery 5.7, kombu 5.7 only" in warning.getMessage()


def test_on_an_unchecked_version_the_consumer_keeps_kombu_s_channel(unchecked):
    connection = consumer_reading(redis_app()).connection_for_read()

    assert connection.transport.Channel is kombu_redis.Channel


def test_on_an_unchecked_version_the_channel_takes_with_kombu_s_brpop(
    unchecked, fake_redis_channels
):
    connection = kombu.Connection("redis://127.0.0.1:6399/0", transport_options={})
    connection.transport.Channel = AtomicChannel
    channel = channel_of(connection)

    assert not channel._atomic
    assert channel.client.response_callbacks.get("BRPOP") != channel._checked_reply


def test_on_an_unchecked_version_dispatch_has_no_taker(unchecked):
    assert taker_of(redis_app()) is None


def test_on_an_unchecked_version_nothing_is_refreshed(unchecked):
    consumer = visibility_consumer(redis_app())

    KeepDeliveriesVisible(consumer).start(consumer)

    assert consumer.timer.calls == []


def test_every_shortcut_off_is_one_warning(unchecked, fake_redis_channels, caplog):
    app = redis_app()
    consumer_reading(app).connection_for_read()
    connection = kombu.Connection("redis://127.0.0.1:6399/0", transport_options={})
    connection.transport.Channel = AtomicChannel
    channel_of(connection)
    taker_of(app)
    held = visibility_consumer(app)
    KeepDeliveriesVisible(held).start(held)

    assert len(gate_warnings(caplog)) == 1


# Celery's tracer, through which dispatch runs a listener's task. -------------------------------


def test_a_traced_run_inside_another_task_sees_its_own_task_and_request_then_gives_them_back():
    app = Celery("versions", set_as_current=False)
    seen = []

    @app.task(name="versions.listener", bind=True)
    def listener(self, data):
        seen.append((current_task._get_current_object(), self.request.id, self.request.retries))

    @app.task(name="versions.dispatch", bind=True)
    def dispatch(self):
        traced = trace(listener, "e1:listener", ("data",), {"id": "e1:listener", "retries": 0})
        seen.append((current_task._get_current_object(), self.request.id, traced.state))

    trace(dispatch, "e1", (), {"id": "e1"})

    assert seen == [(listener, "e1:listener", 0), (dispatch, "e1", "SUCCESS")]


def test_a_traced_run_that_raises_ends_failed_with_its_exception_and_celery_s_signal():
    app = Celery("versions", set_as_current=False)
    failures = []

    @app.task(name="versions.fails")
    def fails(data):
        raise ValueError("the index is gone")

    def on_failure(sender=None, task_id=None, exception=None, **kwargs):
        failures.append((sender, task_id, exception))

    signals.task_failure.connect(on_failure, weak=False)
    try:
        traced = trace(fails, "e1:fails", ("data",), {"id": "e1:fails"})
    finally:
        signals.task_failure.disconnect(on_failure)

    assert (traced.state, str(traced.exception)) == ("FAILURE", "the index is gone")
    assert failures == [(fails, "e1:fails", traced.exception)]


# The queue order a worker's channel takes its queues in. --------------------------------------


def test_kombu_makes_the_workers_queue_order_from_its_setting():
    from kombu.utils.scheduling import cycle_by_name

    from tasks.broker.queue_order import DispatchFirst

    assert isinstance(cycle_by_name("tasks.broker.queue_order:DispatchFirst")(), DispatchFirst)


def test_dispatch_queues_are_taken_in_turn_before_the_listeners_own_queues():
    from tasks.broker.queue_order import DispatchFirst

    cycle = DispatchFirst()
    cycle.update(["articles", "notifier.listener.mail", "deletions", "notifier.listener.cache"])
    taken = []
    for _ in range(4):
        order = cycle.consume(4)
        taken.append(order)
        cycle.rotate(order[0])

    assert taken == [
        ["articles", "deletions", "notifier.listener.mail", "notifier.listener.cache"],
        ["deletions", "articles", "notifier.listener.mail", "notifier.listener.cache"],
        ["articles", "deletions", "notifier.listener.mail", "notifier.listener.cache"],
        ["deletions", "articles", "notifier.listener.mail", "notifier.listener.cache"],
    ]
    cycle.rotate("notifier.listener.mail")
    assert cycle.consume(4)[2:] == ["notifier.listener.cache", "notifier.listener.mail"]
