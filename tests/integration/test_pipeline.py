"""The pipeline end to end: the example app over HTTP, a real Redis, a real celery worker."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import redis
from celery import Celery

from notifier.wire.message import DISPATCH_TASK
from tasks.dead_letters import DeadLetters
from tests.integration.received import Received
from tests.support.processes import CeleryWorker, WebApp, wait_until


def call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def unique(title: str) -> str:
    return f"{title} {uuid.uuid4().hex[:8]}"


def test_a_created_article_reaches_the_listener_with_the_exact_payload(web, worker, received):
    title = unique("Brokers")
    status, created = call("POST", f"{web.url}/articles", {"title": title, "body": "on Redis"})
    assert status == 201
    article = created["data"]

    [event] = received.wait_for("record_articles", title)

    assert event["pid"] != web.pid
    assert event["queue"] == "notifier.listener.tests.integration.listeners.record_articles"
    assert event["payload"] == {
        "timestamp": article["last_modified"],
        "action": "create",
        "uri": "/articles",
        "user_id": None,
        "resource_name": "article",
        "article_id": article["id"],
    }
    assert event["impacted_records"] == [{"new": article}]
    assert event["impacted_objects"] == event["impacted_records"]


def test_updates_and_deletes_carry_the_old_and_new_versions(web, worker, received):
    title = unique("Versions")
    _, created = call("POST", f"{web.url}/articles", {"title": title, "body": "first"})
    url = f"{web.url}/articles/{created['data']['id']}"
    _, updated = call("PATCH", url, {"body": "second"})
    _, deleted = call("DELETE", url)

    events = received.wait_for("record_articles", title, count=3)

    by_action = {event["action"]: event for event in events}
    assert by_action["update"]["impacted_records"] == [
        {"new": updated["data"], "old": created["data"]}
    ]
    assert by_action["update"]["payload"]["uri"] == f"/articles/{created['data']['id']}"
    assert by_action["update"]["payload"]["article_id"] == created["data"]["id"]
    assert by_action["delete"]["impacted_records"] == [
        {"new": deleted["data"], "old": updated["data"]}
    ]


def test_a_rolled_back_write_publishes_nothing(web, worker, received):
    title = unique("Taken id")
    _, created = call("POST", f"{web.url}/articles", {"title": title})
    conflict_title = unique("Conflicting")
    status, _ = call(
        "POST", f"{web.url}/articles", {"id": created["data"]["id"], "title": conflict_title}
    )
    assert status == 409
    marker = unique("Written after the conflict")
    call("POST", f"{web.url}/articles", {"title": marker})

    received.wait_for("record_articles", marker)
    time.sleep(0.5)  # anything published before the marker has had time to arrive too

    assert received.about("record_articles", conflict_title) == []
    assert len(received.about("record_articles", title)) == 1


def test_a_failing_listener_does_not_stop_another_on_the_same_event(
    web, worker, received, redis_client
):
    title = unique("Shared event")
    call("POST", f"{web.url}/articles", {"title": title})

    [recorded] = received.wait_for("record_articles", title)
    [failed] = received.wait_for("fail_on_article_creation", title)

    assert recorded["event_id"] == failed["event_id"]
    dead_letters = DeadLetters(redis_client)
    wait_until(
        lambda: any(
            isinstance(letter.message, dict)
            and letter.message.get("event_id") == failed["event_id"]
            for letter in dead_letters
        ),
        10,
        "the failed listener's message reaching the dead letters",
    )
    [letter] = [
        dead
        for dead in dead_letters
        if isinstance(dead.message, dict) and dead.message.get("event_id") == failed["event_id"]
    ]
    assert letter.listener == "tests.integration.listeners.fail_on_article_creation"
    assert letter.reason == "RuntimeError: this listener fails on every article creation"


def test_a_celery_task_stacked_as_listener_runs_on_its_own_queue(web, worker, received):
    title = unique("Task listener")
    _, created = call("POST", f"{web.url}/articles", {"title": title})
    call("PUT", f"{web.url}/articles/{created['data']['id']}", {"title": title, "body": "new"})

    [event] = received.wait_for("record_updates_task", title)

    assert event["action"] == "update"
    assert event["queue"] == "updates"


def test_the_search_index_follows_creates_updates_and_deletes(web, worker):
    word = f"word{uuid.uuid4().hex[:8]}"
    _, kept = call("POST", f"{web.url}/articles", {"title": f"Kept {word}"})
    _, gone = call("POST", f"{web.url}/articles", {"title": f"Gone {word}"})
    call("PATCH", f"{web.url}/articles/{kept['data']['id']}", {"body": "edited"})

    def found() -> list[dict]:
        return call("GET", f"{web.url}/search?q={word}")[1]["data"]

    wait_until(lambda: len(found()) == 2, 20, "both articles indexed")
    call("DELETE", f"{web.url}/articles/{gone['data']['id']}")
    wait_until(lambda: len(found()) == 1, 20, "the deleted article leaving the index")
    wait_until(lambda: found()[0]["body"] == "edited", 20, "the update reaching the index")


def test_with_the_broker_down_the_write_request_still_succeeds(broker, tmp_path):
    web = WebApp(tmp_path, {"CELERY_BROKER_URL": broker.url})
    try:
        broker.stop()

        started = time.monotonic()
        status, created = call("POST", f"{web.url}/articles", {"title": "Written while down"})
        elapsed = time.monotonic() - started

        assert status == 201
        assert elapsed < 5
        wait_until(
            lambda: "could not publish event" in web.output(), 5, "the publish failure logged"
        )
        log_line = next(
            line for line in web.output().splitlines() if "could not publish event" in line
        )
        assert "create article /articles" in log_line
        assert call("GET", f"{web.url}/articles/{created['data']['id']}")[0] == 200
    finally:
        web.stop()


def test_malformed_messages_end_in_the_dead_letters_and_the_worker_keeps_running(
    web, worker, received, redis_client, redis_server
):
    sender = Celery("sender", broker=redis_server.url, set_as_current=False)
    marker = uuid.uuid4().hex
    sender.send_task(DISPATCH_TASK, args=[{"version": 99, "event_id": marker}], queue="notifier")
    sender.send_task(DISPATCH_TASK, kwargs={"colour": marker}, queue="notifier")
    sender.close()
    dead_letters = DeadLetters(redis_client)

    def kept() -> list:
        return [letter for letter in dead_letters if marker in json.dumps(letter.message)]

    wait_until(lambda: len(kept()) == 2, 10, "both malformed messages kept as dead letters")
    reasons = {letter.reason for letter in kept()}
    assert "unknown schema version 99: this worker reads version 1" in reasons
    [wrong_arguments] = reasons - {"unknown schema version 99: this worker reads version 1"}
    # Celery's TypeError when a worker ran it as a task; the taker's reason when the dispatch
    # task that ran the first message took it behind its own (tasks/broker/taken.py).
    assert wrong_arguments.startswith("TypeError: ") or (
        "dispatch takes a message and only=, not args [] and kwargs {'colour'" in wrong_arguments
    )
    title = unique("After the garbage")
    call("POST", f"{web.url}/articles", {"title": title})
    received.wait_for("record_articles", title)


def test_an_event_written_before_any_worker_started_reaches_a_listener_loaded_with_dash_i(
    broker, tmp_path
):
    env = {"CELERY_BROKER_URL": broker.url, "NOTIFIER_ROUTES": "article.*=articles"}
    web = WebApp(tmp_path, env)
    worker = None
    try:
        title = unique("Before the workers")
        assert call("POST", f"{web.url}/articles", {"title": title})[0] == 201

        worker = CeleryWorker(
            tmp_path, env, include="tests.integration.listeners", name="late-worker"
        )

        [event] = Received(redis.Redis.from_url(broker.url)).wait_for("record_articles", title)
        assert event["payload"]["resource_name"] == "article"
    finally:
        if worker is not None:
            worker.stop()
        web.stop()
