"""Listeners of the batch tests' workers (NOTIFIER_LISTENERS of test_batches.py): they record
each run in Redis, ``batches:started`` and ``batches:finished``, one JSON list of event ids per
run."""

from __future__ import annotations

import json
import os
import time

import redis

from tasks import Event, listener

_redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


def _record(key: str, events: list[Event]) -> None:
    _redis.rpush(key, json.dumps([event.event_id for event in events]))


@listener("bulk_article", batch=50)
def index_in_bulk(events: list[Event]) -> None:
    _record("batches:started", events)
    if _redis.exists("batches:slow"):  # while a test wants it to be killed mid-batch
        time.sleep(30)
    _record("batches:finished", events)


@listener("slow_article")
def index_slowly(event: Event) -> None:
    # Alone: dispatch runs it, for its own message and for each one it took.
    _record("slow:started", [event])
    time.sleep(float(event.payload.get("seconds", 0)))
    _record("slow:finished", [event])
