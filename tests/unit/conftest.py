"""What the unit tests share: the golden Kinto events, an environment without notifier's, a
fake Redis (which runs Lua scripts) with dispatch's taker on it, and a worker's registry with
its collaborators around fakes (dead letters and an order guard in fake Redis)."""

import json
from pathlib import Path

import fakeredis
import pytest
from celery import Celery

import notifier.outbox
from tasks.app import app as worker_app
from tasks.broker.taking import Taker
from tasks.dead_letters import DeadLetters
from tasks.listeners.ordered import OrderGuard
from tasks.listeners.registry import Registry
from tasks.wiring import bind, collaborators

KINTO_EVENTS = Path(__file__).parent.parent / "fixtures" / "kinto-26-events.jsonl"


def kinto_events(event_class=None):
    """The events Kinto 26.5 emitted, one dict per line, optionally of one event class."""
    with KINTO_EVENTS.open() as lines:
        events = [json.loads(line) for line in lines if line.strip()]
    return [event for event in events if event_class in (None, event["event_class"])]


@pytest.fixture(autouse=True)
def no_notifier_environ(monkeypatch, tmp_path):
    """Keep the process environment out of notifier's settings and of Celery's broker URL, and
    each test's spool in a directory of its own."""
    monkeypatch.setenv("NOTIFIER_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("NOTIFIER_ROUTES", raising=False)


@pytest.fixture
def client():
    return fakeredis.FakeRedis()


@pytest.fixture
def taker(client):
    """Dispatch's taker, on the fake Redis, without the thread that keeps taken messages
    visible."""
    taker = Taker(client, visibility_timeout=30)
    taker.hold = lambda tags: None
    return taker


@pytest.fixture
def app():
    """A Celery app of the test's own, on an in-memory broker."""
    return Celery("unit-tests", broker="memory://", set_as_current=False)


@pytest.fixture
def registry(app):
    """A registry of the test's own, not wired: its listeners run bare outside a worker."""
    return Registry(app)


@pytest.fixture
def dead_letters():
    return DeadLetters(fakeredis.FakeRedis())


@pytest.fixture
def order_guard():
    """An order guard in a fake Redis of its own, which never waits for busy objects."""
    return OrderGuard(fakeredis.FakeRedis(), wait=0)


@pytest.fixture
def wired(registry, dead_letters, order_guard):
    """The collaborators a worker of ``registry`` has (tasks.wiring), around the fakes, bound to
    its app: its listeners, dispatch and the signal handlers work with them as a worker's do."""
    built = collaborators(registry, dead_letters, order_guard)
    bind(registry.app, built)
    return built


@pytest.fixture
def worker_wired(wired):
    """The same collaborators bound to the worker's app too, whose dispatch task is
    ``tasks.dispatch.task.dispatch``; unbound after the test."""
    bind(worker_app, wired)
    yield wired
    del worker_app.notifier_collaborators


@pytest.fixture
def outboxes(monkeypatch):
    """The outboxes that the apps of a test made; their threads stop with the test."""
    made = []
    real = notifier.outbox.outbox_for

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr("notifier.outbox.outbox_for", recording)
    yield made
    for outbox in made:
        outbox.stop()
        outbox.engine.dispose()
