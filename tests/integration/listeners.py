"""The test worker's listeners (NOTIFIER_LISTENERS): they record what they receive in Redis."""

from __future__ import annotations

import json
import os

import redis
from celery import current_task

from tasks import Event, app, listener

_redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


def _record(name: str, event: Event) -> None:
    _redis.rpush(
        f"received:{name}",
        json.dumps(
            {
                "pid": os.getpid(),
                "queue": current_task.request.delivery_info["routing_key"],
                "event_id": event.event_id,
                "resource_name": event.resource_name,
                "action": event.action,
                "payload": event.payload,
                "impacted_records": event.impacted_records,
                "impacted_objects": event.impacted_objects,
            }
        ),
    )


@listener("article")
def record_articles(event: Event) -> None:
    _record("record_articles", event)


@listener("article", actions=("create",), max_retries=0)
def fail_on_article_creation(event: Event) -> None:
    _record("fail_on_article_creation", event)
    raise RuntimeError("this listener fails on every article creation")


@listener("article", actions=("update",), queue="updates")
@app.task(name="tests.record_updates_task", max_retries=0)
def record_updates_task(event: Event) -> None:
    _record("record_updates_task", event)


@listener(("bucket", "collection", "record"))
def record_kinto_changes(event: Event) -> None:
    _record("record_kinto_changes", event)


@listener("record", where={"bucket_id": "only-this-bucket"})
def record_one_buckets_records(event: Event) -> None:
    _record("record_one_buckets_records", event)


#: fail_until_fixed fails until this Redis key exists.
FIXED_KEY = "listeners:fail_until_fixed:fixed"


@listener("flaky", max_retries=0)
def fail_until_fixed(event: Event) -> None:
    if not _redis.exists(FIXED_KEY):
        raise RuntimeError(f"not fixed yet (set the Redis key {FIXED_KEY})")
    _record("fail_until_fixed", event)


@listener("flaky")
def record_flaky(event: Event) -> None:
    _record("record_flaky", event)
