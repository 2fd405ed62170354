"""notifier.listeners.redis against a real redis-server of our own: pushed, popped, and bounded."""

from __future__ import annotations

import json
import signal
import time

import redis
from webtest import TestApp

from examples.articles import make_app
from tests.support.processes import RedisServer


def app_pushing_to(server: RedisServer, tmp_path, **options: str) -> TestApp:
    settings = {
        "sqlalchemy.url": f"sqlite:///{tmp_path}/articles.sqlite3",
        "search.index": str(tmp_path / "index.sqlite3"),
        "notifier.event_listeners": "redis",
        "notifier.event_listeners.redis.use": "notifier.listeners.redis",
        "notifier.event_listeners.redis.url": server.url,
        "notifier.event_listeners.redis.listname": "article-events",
        **{f"notifier.event_listeners.redis.{key}": value for key, value in options.items()},
    }
    return TestApp(make_app(settings))


def test_committed_writes_are_pushed_and_popped_in_the_order_they_happened(broker, tmp_path):
    app = app_pushing_to(broker, tmp_path)
    client = redis.Redis.from_url(broker.url)

    created = app.post_json("/articles", {"title": "one"}).json["data"]
    app.patch_json(f"/articles/{created['id']}", {"title": "two"})
    app.delete(f"/articles/{created['id']}")

    popped = [json.loads(client.brpop(["article-events"], timeout=5)[1]) for _ in range(3)]
    assert [payload["action"] for payload in popped] == ["create", "update", "delete"]
    assert popped[0] == {
        "timestamp": created["last_modified"],
        "action": "create",
        "uri": "/articles",
        "user_id": None,
        "resource_name": "article",
        "article_id": created["id"],
    }


def test_the_impacted_records_are_pushed_when_asked(broker, tmp_path):
    app = app_pushing_to(broker, tmp_path, include_impacted="true")
    client = redis.Redis.from_url(broker.url)

    created = app.post_json("/articles", {"title": "with records"}).json["data"]

    pushed = json.loads(client.brpop(["article-events"], timeout=5)[1])
    assert pushed["impacted_objects"] == [{"new": created}]


def test_a_hung_redis_holds_a_write_no_longer_than_the_timeout(broker, tmp_path):
    app = app_pushing_to(broker, tmp_path, timeout="0.3")
    app.post_json("/articles", {"title": "warm up"})  # the pool has a connection now
    broker.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = app.post_json("/articles", {"title": "while hung"})
        elapsed = time.monotonic() - started
    finally:
        broker.signal(signal.SIGCONT)

    assert response.status_code == 201
    # kinto-redis holds such a write about 5 s; here the push gives up after 0.3 s.
    assert elapsed < 2


def test_a_stopped_redis_does_not_fail_the_write(broker, tmp_path, caplog):
    app = app_pushing_to(broker, tmp_path)
    broker.stop()

    response = app.post_json("/articles", {"title": "while down"})

    assert response.status_code == 201
    assert "could not push event (create article /articles) to the Redis list article-events" in (
        caplog.text
    )
