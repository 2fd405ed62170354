"""Listeners of the worker-death tests (NOTIFIER_LISTENERS of test_worker_deaths.py): each
counts what it receives in Redis, ``deaths:received:<listener>``: event id -> deliveries.

``alone`` is the one listener of the ``alone`` events (dispatch runs it itself, see
tasks/dispatch/inline.py); ``first``, ``second`` and ``third`` are the three listeners of the
``three`` events (one task each). Each takes a few milliseconds, as a listener that writes somewhere
does, so that kills land inside listeners too.
"""

from __future__ import annotations

import os
import time
from functools import cache

import redis

from tasks import Event, listener

RECEIVED = "deaths:received:{}"
LISTENERS = {"alone": ("alone",), "three": ("first", "second", "third")}


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


def _receive(name: str, event: Event) -> None:
    time.sleep(0.005)
    _redis().hincrby(RECEIVED.format(name), event.event_id, 1)


@listener("alone")
def alone(event: Event) -> None:
    _receive("alone", event)


@listener("three")
def first(event: Event) -> None:
    _receive("first", event)


@listener("three")
def second(event: Event) -> None:
    _receive("second", event)


@listener("three")
def third(event: Event) -> None:
    _receive("third", event)
