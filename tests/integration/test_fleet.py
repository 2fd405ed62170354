"""Workers that know different listeners: no event is lost to the worker that lacks one.

Each test has a redis-server of its own and real workers: one that knows the listeners of
tests/integration/listeners.py, and one that does not (it has the search index only, or only
dispatches). Messages are published as the web side writes them.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tasks.dead_letters import DeadLetters
from tests.integration.received import Received
from tests.support.processes import CeleryWorker, wait_until

LISTENER = "tests.integration.listeners.record_articles"


def publish_updates(broker_url: str, count: int, gap: float = 0.0) -> list[str]:
    """Publish ``count`` article updates to the queue ``notifier``; return their titles."""
    publisher = CeleryPublisher(broker_url, 5)
    titles = []
    try:
        for n in range(count):
            title = f"fleet {uuid.uuid4().hex[:8]} {n}"
            record = {"id": f"a{n}", "title": title, "last_modified": 1000 + n}
            payload = {"resource_name": "article", "action": "update", "article_id": f"a{n}"}
            message = encode(
                payload, [{"new": record, "old": {**record, "title": "old"}}], [0], "r"
            )
            publisher.publish(message, "notifier")
            titles.append(title)
            time.sleep(gap)
    finally:
        publisher.close()
    return titles


def reached_or_kept(client: redis.Redis, titles: list[str]) -> dict[str, str]:
    """Where each title's event went for LISTENER: "received", "dead letter", or "nowhere"."""
    received = Received(client)
    kept = [
        json.dumps(letter.message) for letter in DeadLetters(client) if letter.listener == LISTENER
    ]
    where = {}
    for title in titles:
        if received.about("record_articles", title):
            where[title] = "received"
        elif any(title in letter for letter in kept):
            where[title] = "dead letter"
        else:
            where[title] = "nowhere"
    return where


def test_a_worker_without_a_listeners_module_hands_its_events_to_the_worker_that_has_it(
    broker, tmp_path
):
    env = {
        "CELERY_BROKER_URL": broker.url,
        "NOTIFIER_SEARCH_INDEX": str(tmp_path / "search-index.sqlite3"),
    }
    knowing = CeleryWorker(
        tmp_path,
        {**env, "NOTIFIER_LISTENERS": "tests.integration.listeners"},
        concurrency=1,
        name="knowing",
    )
    lacking = CeleryWorker(
        tmp_path, {**env, "NOTIFIER_SEARCH_RESOURCES": "article"}, concurrency=1, name="lacking"
    )
    client = redis.Redis.from_url(broker.url)
    try:
        # One at a time, so that both workers take some: each waits its turn on the queue.
        titles = publish_updates(broker.url, 20, gap=0.05)

        wait_until(
            lambda: "nowhere" not in reached_or_kept(client, titles).values(),
            60,
            f"every event reaching {LISTENER} or a dead letter naming it",
        )
    finally:
        knowing.stop()
        lacking.stop()

    assert set(reached_or_kept(client, titles).values()) <= {"received", "dead letter"}
    log = lacking.output()
    [lacks] = [line for line in log.splitlines() if "lacks listeners that other workers" in line]
    assert "ERROR" in lacks
    assert f"{LISTENER} (known by knowing-" in lacks
    handed = log.count(f"listener {LISTENER}, known by worker(s) knowing-")
    assert handed > 0, "the lacking worker took no message: nothing was tested"
    assert "is not loaded in this worker: sent to its queue" in log


def test_a_dispatch_only_worker_hands_every_event_to_the_worker_that_knows_its_listener(
    broker, tmp_path
):
    env = {"CELERY_BROKER_URL": broker.url}
    # Runs the listeners only: it does not consume the dispatch queue.
    listening = CeleryWorker(
        tmp_path,
        {**env, "NOTIFIER_LISTENERS": "tests.integration.listeners"},
        concurrency=1,
        name="listening",
        options=["-X", "notifier"],
    )
    dispatching = CeleryWorker(
        tmp_path, {**env, "NOTIFIER_DISPATCH_ONLY": "true"}, concurrency=1, name="dispatching"
    )
    client = redis.Redis.from_url(broker.url)
    try:
        titles = publish_updates(broker.url, 10)

        wait_until(
            lambda: set(reached_or_kept(client, titles).values()) == {"received"},
            60,
            f"every event reaching {LISTENER}",
        )
    finally:
        listening.stop()
        dispatching.stop()

    assert "only dispatches: it hands each event to the listeners" in dispatching.output()
    assert "notifier.dispatch" not in listening.output().split(" ready.", 1)[1]


def test_a_worker_that_knows_no_listener_does_not_start(broker, tmp_path):
    # NOTIFIER_LISTENER: the variable's name misspelt, as an operator would.
    env = {"CELERY_BROKER_URL": broker.url, "NOTIFIER_LISTENER": "tests.integration.listeners"}

    with pytest.raises(RuntimeError) as failed:
        CeleryWorker(tmp_path, env, concurrency=1, name="typo")

    error = str(failed.value)
    assert "typo exited with 1" in error
    assert "refuses to start: ConfigurationError: NOTIFIER_LISTENERS = '' is not valid" in error
    assert "(NOTIFIER_LISTENER is set: did you mean NOTIFIER_LISTENERS?)" in error
    assert redis.Redis.from_url(broker.url).hlen("notifier:fleet") == 0
