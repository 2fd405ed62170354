"""Listeners that are slow or die, loaded by the crash tests' workers (NOTIFIER_LISTENERS).

They write what happens into Redis: ``crash:started:<event_id>`` and ``crash:finished:<id>``
(the pids that ran them), ``crash:attempts:<id>``.
"""

from __future__ import annotations

import os
import signal
import time

import redis

from tasks import Event, listener

_redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


@listener("job", actions=("create",), max_retries=2)
def slow_job(event: Event) -> None:
    _redis.rpush(f"crash:started:{event.event_id}", os.getpid())
    time.sleep(float(event.payload.get("seconds", 3)))
    _redis.rpush(f"crash:finished:{event.event_id}", os.getpid())


@listener("job", actions=("update",), max_retries=2)
def dies_the_first_time(event: Event) -> None:
    if _redis.incr(f"crash:attempts:{event.event_id}") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _redis.rpush(f"crash:finished:{event.event_id}", os.getpid())


@listener("job", actions=("delete",), max_retries=2)
def dies_every_time(event: Event) -> None:
    _redis.incr(f"crash:attempts:{event.event_id}")
    os.kill(os.getpid(), signal.SIGKILL)


@listener("poison", actions=("create",), max_retries=2, retry_backoff=False, default_retry_delay=0)
def always_raises(event: Event) -> None:
    _redis.incr(f"crash:attempts:{event.event_id}")
    raise RuntimeError("this listener fails every time")


@listener("collection_of_records", actions=("delete",))
def count_deleted_records(event: Event) -> None:
    _redis.incrby(f"crash:records:{event.event_id}", len(event.impacted_records))
    _redis.rpush(f"crash:parts:{event.event_id}", f"{event.part}/{event.parts}")
