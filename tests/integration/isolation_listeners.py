"""Listeners of the isolation tests (NOTIFIER_LISTENERS of test_listener_isolation.py): three
listeners on each of three resources, which dispatch runs one after another in its own task
(tasks/dispatch/inline.py), unless one is too slow for it (tasks/dispatch/pace.py).

Each run is recorded in the broker's Redis: ``isolation:received:<listener>`` counts the runs of
each event (event id -> runs), and ``isolation:runs:<listener>`` lists them in the order they
ended, each with when (``time.time()``), whether dispatch ran it (``inline``) and the attempts
before it (``retries``).

- ``failing``: ``first``, ``broken`` and ``last``; ``broken`` raises on every attempt, and tries
  twice (``max_retries=1``, no delay), so that each event ends in the dead letters quickly.
- ``slow``: ``slow`` sleeps :data:`SLOW` seconds, well over the inline budget, and comes first,
  so that while dispatch runs it, ``first`` and ``second`` wait.
- ``killed``: ``first``, ``second`` and ``steady``; ``steady`` sleeps :data:`STEADY`, under the
  budget, so that the three stay in dispatch and a kill lands inside their runs.
"""

from __future__ import annotations

import json
import os
import time
from functools import cache

import redis
from celery import current_task
from celery.signals import worker_process_init

from notifier.wire.message import DISPATCH_TASK
from tasks import Event, app, listener

RECEIVED = "isolation:received:{}"
RUNS = "isolation:runs:{}"
#: The resources of the tests, and the names of their listeners.
LISTENERS = {
    "failing": ("isolation.failing.first", "isolation.failing.broken", "isolation.failing.last"),
    "slow": ("isolation.slow.slow", "isolation.slow.first", "isolation.slow.second"),
    "killed": ("isolation.killed.first", "isolation.killed.second", "isolation.killed.steady"),
}
#: How many times ``broken`` runs for each event: its first attempt and one retry.
BROKEN_ATTEMPTS = 2
SLOW = 0.1  # seconds: well over the inline budget (five times the default)
STEADY = 0.002  # seconds: under the inline budget


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


@worker_process_init.connect
def _connect(**kwargs: object) -> None:
    # Each pool process connects before its first run: a first run that connected would take
    # longer than the budget, and the first listener of each message would get a task of its
    # own (tasks/dispatch/pace.py) where these tests want all three run in dispatch.
    _redis().ping()


def _in_dispatch() -> bool:
    # Run by dispatch itself, the dispatch task's request is still on its stack; in the
    # listener's own task, it is empty.
    return app.tasks[DISPATCH_TASK].request.id is not None


def _receive(name: str, event: Event) -> None:
    run = {
        "event_id": event.event_id,
        "at": time.time(),
        "inline": _in_dispatch(),
        "retries": current_task.request.retries,
    }
    pipeline = _redis().pipeline(transaction=False)
    pipeline.hincrby(RECEIVED.format(name), event.event_id, 1)
    pipeline.rpush(RUNS.format(name), json.dumps(run))
    pipeline.execute()


@listener("failing", name="isolation.failing.first")
def failing_first(event: Event) -> None:
    _receive("isolation.failing.first", event)


@listener(
    "failing",
    name="isolation.failing.broken",
    max_retries=BROKEN_ATTEMPTS - 1,
    default_retry_delay=0,
    retry_backoff=False,
)
def failing_broken(event: Event) -> None:
    _receive("isolation.failing.broken", event)
    raise RuntimeError("fails on every attempt")


@listener("failing", name="isolation.failing.last")
def failing_last(event: Event) -> None:
    _receive("isolation.failing.last", event)


@listener("slow", name="isolation.slow.slow")
def slow_slow(event: Event) -> None:
    time.sleep(SLOW)
    _receive("isolation.slow.slow", event)


@listener("slow", name="isolation.slow.first")
def slow_first(event: Event) -> None:
    _receive("isolation.slow.first", event)


@listener("slow", name="isolation.slow.second")
def slow_second(event: Event) -> None:
    _receive("isolation.slow.second", event)


@listener("killed", name="isolation.killed.first")
def killed_first(event: Event) -> None:
    _receive("isolation.killed.first", event)


@listener("killed", name="isolation.killed.second")
def killed_second(event: Event) -> None:
    _receive("isolation.killed.second", event)


@listener("killed", name="isolation.killed.steady")
def killed_steady(event: Event) -> None:
    time.sleep(STEADY)
    _receive("isolation.killed.steady", event)
