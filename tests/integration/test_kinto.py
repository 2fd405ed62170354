"""Kinto 26 with notifier: writes through Kinto's HTTP API reach a real celery worker."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kinto_app import KintoServer, kinto_request
from tests.support.processes import RedisServer, wait_until

FIXTURE = Path(__file__).parent.parent / "fixtures" / "kinto-26-events.jsonl"


def kinto_fixture_payload_keys(step: str) -> set[str]:
    """The payload keys Kinto 26.5 gave an AfterResourceChanged event of ``step``."""
    for line in FIXTURE.read_text().splitlines():
        event = json.loads(line)
        if event["step"] == step and event["event_class"] == "AfterResourceChanged":
            return set(event["payload"])
    raise LookupError(step)


def call(method: str, url: str, data: Any = None) -> tuple[int, Any]:
    request = kinto_request(method, url, data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture(scope="module")
def kinto(deployment_env, worker, tmp_path_factory) -> Iterator[KintoServer]:
    """Kinto configured as Kinto documents configured listeners."""
    server = KintoServer(
        tmp_path_factory.mktemp("kinto"),
        "kinto.event_listeners = celery\n"
        "kinto.event_listeners.celery.use = notifier.listeners.celery\n"
        f"kinto.event_listeners.celery.broker_url = {deployment_env['CELERY_BROKER_URL']}\n"
        "kinto.event_listeners.celery.actions = create update delete\n"
        "kinto.event_listeners.celery.resources = bucket collection record\n",
    )
    yield server
    server.stop()


def events_in(received, listener: str, bucket_id: str) -> list[dict]:
    return [event for event in received.by(listener) if event["payload"]["bucket_id"] == bucket_id]


def wait_for_events(received, listener: str, bucket_id: str, count: int) -> list[dict]:
    wait_until(
        lambda: len(events_in(received, listener, bucket_id)) >= count,
        20,
        f"{count} events of bucket {bucket_id} reaching {listener}",
    )
    return events_in(received, listener, bucket_id)


def new_bucket(kinto: KintoServer) -> tuple[str, str]:
    bucket_id = f"b{uuid.uuid4().hex[:8]}"
    assert call("PUT", f"{kinto.url}/buckets/{bucket_id}", {"data": {}})[0] == 201
    assert call("PUT", f"{kinto.url}/buckets/{bucket_id}/collections/c1", {"data": {}})[0] == 201
    return bucket_id, f"{kinto.url}/buckets/{bucket_id}/collections/c1/records"


def test_kinto_writes_reach_a_worker_listener_with_kintos_payloads_and_objects(
    kinto, worker, received
):
    bucket_id, records = new_bucket(kinto)
    _, created = call("POST", records, {"data": {"title": "first"}})
    record_url = f"{records}/{created['data']['id']}"
    _, updated = call("PATCH", record_url, {"data": {"title": "second"}})
    _, deleted = call("DELETE", record_url)

    events = wait_for_events(received, "record_kinto_changes", bucket_id, 5)

    # Two worker processes: events about different objects may finish in any order.
    by_kind = {(e["resource_name"], e["action"]): e for e in events}
    assert sorted(by_kind) == [
        ("bucket", "create"),
        ("collection", "create"),
        ("record", "create"),
        ("record", "delete"),
        ("record", "update"),
    ]
    create, update, delete = (
        by_kind["record", action] for action in ("create", "update", "delete")
    )
    assert set(create["payload"]) == kinto_fixture_payload_keys("create_record_1")
    assert set(update["payload"]) == kinto_fixture_payload_keys("update_record_patch")
    assert set(delete["payload"]) == kinto_fixture_payload_keys("delete_record")
    assert create["payload"]["uri"] == f"/buckets/{bucket_id}/collections/c1/records"
    assert create["payload"]["user_id"].startswith("basicauth:")
    assert create["payload"]["collection_id"] == "c1"
    assert create["impacted_objects"] == [{"new": created["data"]}]
    assert update["impacted_objects"] == [{"new": updated["data"], "old": created["data"]}]
    # Kinto's delete carries the tombstone as new.
    assert delete["impacted_objects"] == [{"new": deleted["data"], "old": updated["data"]}]
    assert deleted["data"]["deleted"] is True


def test_a_kinto_batch_reaches_the_worker_as_one_merged_event(kinto, worker, received):
    bucket_id, _ = new_bucket(kinto)
    path = f"/buckets/{bucket_id}/collections/c1/records"
    status, batch = call(
        "POST",
        f"{kinto.url}/batch",
        {
            "requests": [
                {"method": "POST", "path": path, "body": {"data": {"n": n}}} for n in (1, 2, 3)
            ]
        },
    )
    assert status == 200

    events = wait_for_events(received, "record_kinto_changes", bucket_id, 3)
    time.sleep(0.5)  # a second event for the batch would have arrived by now

    [merged] = [
        e
        for e in events_in(received, "record_kinto_changes", bucket_id)
        if e["resource_name"] == "record"
    ]
    assert merged["impacted_objects"] == [
        {"new": response["body"]["data"]} for response in batch["responses"]
    ]
    assert len(events) == 3  # bucket, collection, and the one merged record event


def test_an_aborted_kinto_batch_reaches_no_listener(kinto, worker, received):
    bucket_id, records = new_bucket(kinto)
    path = f"/buckets/{bucket_id}/collections/c1/records"
    status, batch = call(
        "POST",
        f"{kinto.url}/batch",
        {
            "requests": [
                {"method": "POST", "path": path, "body": {"data": {"id": "doomed"}}},
                {"method": "POST", "path": "/__conflict__"},
            ]
        },
    )
    assert status == 200
    # Kinto aborted the batch's transaction (its memory backend keeps the write anyway: it
    # does not take part in transactions; PostgreSQL would roll it back).
    assert [response["status"] for response in batch["responses"]] == [201, 409]

    call("POST", records, {"data": {"id": "marker"}})
    wait_for_events(received, "record_kinto_changes", bucket_id, 3)
    time.sleep(0.5)  # anything published before the marker has had time to arrive too

    record_ids = [
        change["new"]["id"]
        for event in events_in(received, "record_kinto_changes", bucket_id)
        if event["resource_name"] == "record"
        for change in event["impacted_objects"]
    ]
    assert record_ids == ["marker"]


def test_a_listener_filtered_on_a_bucket_gets_only_that_buckets_records(kinto, worker, received):
    for bucket_id in ("only-this-bucket", f"other{uuid.uuid4().hex[:8]}"):
        call("PUT", f"{kinto.url}/buckets/{bucket_id}", {"data": {}})
        call("PUT", f"{kinto.url}/buckets/{bucket_id}/collections/c1", {"data": {}})
        call("POST", f"{kinto.url}/buckets/{bucket_id}/collections/c1/records", {"data": {}})
    wait_for_events(received, "record_kinto_changes", bucket_id, 3)  # the other bucket's
    time.sleep(0.5)

    buckets = {e["payload"]["bucket_id"] for e in received.by("record_one_buckets_records")}
    assert buckets == {"only-this-bucket"}


def test_kinto_includes_notifier_publishes_kintos_committed_events(
    deployment_env, worker, received, tmp_path
):
    server = KintoServer(
        tmp_path,
        f"notifier.broker_url = {deployment_env['CELERY_BROKER_URL']}\n",
        name="kinto-includes",
        includes="notifier",
    )
    try:
        bucket_id, records = new_bucket(server)
        _, created = call("POST", records, {"data": {"title": "included"}})

        events = wait_for_events(received, "record_kinto_changes", bucket_id, 3)
        [record_event] = [e for e in events if e["resource_name"] == "record"]
        assert record_event["impacted_objects"] == [{"new": created["data"]}]
    finally:
        server.stop()


def test_kinto_with_the_redis_listener_pushes_committed_writes_and_reads_when_asked(
    redis_server, redis_client, tmp_path
):
    server = KintoServer(
        tmp_path,
        "kinto.event_listeners = redis\n"
        "kinto.event_listeners.redis.use = notifier.listeners.redis\n"
        f"kinto.event_listeners.redis.url = {redis_server.url}\n"
        "kinto.event_listeners.redis.actions = create read\n"
        "kinto.event_listeners.redis.resources = record\n",
        name="kinto-redis",
    )
    try:
        bucket_id, records = new_bucket(server)
        _, created = call("POST", records, {"data": {"title": "read me"}})
        call("GET", f"{records}/{created['data']['id']}")

        # kinto-redis's list, popped in the order the events happened.
        popped = [
            json.loads(redis_client.brpop(["kinto.core.events"], timeout=10)[1]) for _ in "ab"
        ]
        assert [(p["action"], p["resource_name"], p["bucket_id"]) for p in popped] == [
            ("create", "record", bucket_id),
            ("read", "record", bucket_id),
        ]
        assert set(popped[0]) == kinto_fixture_payload_keys("create_record_1")
    finally:
        server.stop()


def test_kintos_heartbeat_says_whether_notifier_s_broker_answers(tmp_path):
    broker = RedisServer(tmp_path)  # the test's own: it stops it
    server = KintoServer(
        tmp_path,
        f"notifier.broker_url = {broker.url}\nnotifier.publish_timeout = 0.5\n",
        name="kinto-heartbeat",
        includes="notifier",
    )
    try:
        status, beats = call("GET", f"{server.url}/__heartbeat__")
        assert (status, beats["notifier"]) == (200, True)

        broker.stop()
        status, beats = call("GET", f"{server.url}/__heartbeat__")

        assert (status, beats["notifier"]) == (503, False)
        assert {name: up for name, up in beats.items() if name != "notifier"} == {
            "storage": True,
            "permission": True,
            "cache": True,
        }
        wait_until(
            lambda: "heartbeat: the broker does not answer (ConnectionError" in server.output(),
            5,
            "the heartbeat's warning",
        )
    finally:
        server.stop()
        broker.stop()
