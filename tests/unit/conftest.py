"""What the unit tests share: the golden Kinto events, and an environment without notifier's."""

import json
from pathlib import Path

import pytest

KINTO_EVENTS = Path(__file__).parent.parent / "fixtures" / "kinto-26-events.jsonl"


def kinto_events(event_class=None):
    """The events Kinto 26.5 emitted, one dict per line, optionally of one event class."""
    with KINTO_EVENTS.open() as lines:
        events = [json.loads(line) for line in lines if line.strip()]
    return [event for event in events if event_class in (None, event["event_class"])]


@pytest.fixture(autouse=True)
def no_notifier_environ(monkeypatch):
    """Keep the process environment out of notifier's settings and of Celery's broker URL."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("NOTIFIER_ROUTES", raising=False)
