"""Listeners of the Redis-state tests' workers (NOTIFIER_LISTENERS): each keeps what it did in
a few Redis keys of its own, the same ones whatever the number of events."""

from __future__ import annotations

import json
import os
import signal

import redis

from tasks import Event, listener

_redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])

#: How many calls of fails_then_succeeds fail, per event (the test sets it).
FAILURES_KEY = "state:failures"


@listener("pair")
def count_pair_first(event: Event) -> None:
    _redis.incr("state:pair:first")


@listener("pair")
def count_pair_second(event: Event) -> None:
    _redis.incr("state:pair:second")


@listener("alone")
def count_alone(event: Event) -> None:
    # The only listener of its events: dispatch runs it itself (tasks/dispatch/inline.py).
    _redis.incr("state:alone")


@listener("flaky", max_retries=2, retry_backoff=False, default_retry_delay=0)
def fails_then_succeeds(event: Event) -> None:
    calls = _redis.hincrby("state:calls", event.event_id, 1)
    if calls <= int(_redis.get(FAILURES_KEY) or 0):
        raise RuntimeError(f"call {calls} fails")
    _redis.rpush("state:succeeded", json.dumps({"event_id": event.event_id, "calls": calls}))


@listener("doomed", max_retries=1)
def kills_its_whole_worker(event: Event) -> None:
    # The worker's main process first, then its pool process: as a machine lost, no
    # acknowledgement and no failure reach Redis.
    _redis.hincrby("state:calls", event.event_id, 1)
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
