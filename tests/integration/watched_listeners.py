"""Listeners an operator watches with Celery's tools (NOTIFIER_LISTENERS of
test_task_events.py): each records its runs in Redis."""

from __future__ import annotations

import os
import time

import redis
from celery import current_task

from tasks import Event, listener

_redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


def _record(name: str, event: Event) -> None:
    _redis.rpush(f"watched:{name}", f"{event.event_id} {current_task.request.id}")


@listener("lone", name="lone")
def lone(event: Event) -> None:
    _record("lone", event)


@listener("trio", name="first_of_three")
def first_of_three(event: Event) -> None:
    _record("first_of_three", event)


@listener("trio", name="second_of_three")
def second_of_three(event: Event) -> None:
    _record("second_of_three", event)


@listener("trio", name="third_of_three")
def third_of_three(event: Event) -> None:
    _record("third_of_three", event)


@listener("failing", name="always_fails", max_retries=1, retry_backoff=False, default_retry_delay=0)
def always_fails(event: Event) -> None:
    _record("always_fails", event)
    raise RuntimeError("fails on every attempt")


@listener("slow", name="slow")
def slow(event: Event) -> None:
    _record("slow", event)
    time.sleep(float(event.payload.get("seconds", 0)))


@listener("limited", name="limited")
def limited(event: Event) -> None:
    _record("limited", event)
