"""What the unit tests share: the golden Kinto events, an environment without notifier's, and
a fake Redis (which runs Lua scripts) with dispatch's taker on it."""

import json
from pathlib import Path

import fakeredis
import pytest

import notifier.outbox
from tasks.broker.taking import Taker

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
