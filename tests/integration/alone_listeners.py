"""Listeners that each alone want their events (NOTIFIER_LISTENERS of test_dispatch_alone.py):
they record each run in Redis, with the task that ran them."""

from __future__ import annotations

import json
import os

import redis
from celery import current_task

from tasks import Event, listener

_redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


def _record(name: str, event: Event) -> None:
    request = current_task.request
    _redis.rpush(
        f"alone:{name}",
        json.dumps(
            {
                "event_id": event.event_id,
                "task_id": request.id,
                "retries": request.retries,
                "queue": request.delivery_info["routing_key"],
            }
        ),
    )


@listener("solo")
def solo(event: Event) -> None:
    _record("solo", event)


@listener("flaky_solo", max_retries=2, retry_backoff=False, default_retry_delay=0)
def flaky_solo(event: Event) -> None:
    _record("flaky_solo", event)
    if current_task.request.retries == 0:
        raise RuntimeError("fails on its first attempt")


@listener("broken_solo", max_retries=1, retry_backoff=False, default_retry_delay=0)
def broken_solo(event: Event) -> None:
    _record("broken_solo", event)
    raise RuntimeError("fails on every attempt")


@listener("unretried_solo", max_retries=0)
def unretried(event: Event) -> None:
    raise RuntimeError("never retried")
