"""The lag row's listeners (NOTIFIER_LISTENERS=bench.lag_listeners), beside the built-in search
index (NOTIFIER_SEARCH_RESOURCES=article): a recorder of when each article's event arrived,
and a note of when the search index finished with it.

Both write to the Redis at ``$BENCH_LAG_URL`` (a database of the bench's own), one ``RPUSH``
per event of ``"<record id> <CLOCK_MONOTONIC seconds>"``: the list says how many times each
record was received, not only when, so that bench/lag.py can check that each arrived once.
CLOCK_MONOTONIC is one clock for every process of the machine: the bench reads it too, when
each write's response comes back.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from celery import signals

from tasks import Event, listener

#: The example app's resource the row writes.
RESOURCE = "article"
#: The recorder's name, and the search index's (tasks/builtin/search.py).
RECORDER = "bench.lag_listeners.recorder"
SEARCH_INDEX = "notifier.search_index"
#: The lists: what the recorder received, what the search index finished.
RECEIVED_KEY = "bench:lag:received"
INDEXED_KEY = "bench:lag:indexed"


def clock() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@functools.cache
def _client() -> redis.Redis:
    # Made on the first use, in the pool process that records: never shared across a fork.
    return redis.Redis.from_url(os.environ["BENCH_LAG_URL"])


def _note(key: str, records: Iterable[Mapping[str, Any]]) -> None:
    now = clock()
    ids = [str((change.get("new") or change.get("old") or {}).get("id")) for change in records]
    if ids:
        _client().rpush(key, *(f"{record_id} {now!r}" for record_id in ids))


@listener(RESOURCE, actions=("create",), name=RECORDER)
def recorder(event: Event) -> None:
    """When each record's event arrived: one ``RPUSH``, the first thing it does."""
    _note(RECEIVED_KEY, event.impacted_records)


@signals.task_postrun.connect
def search_index_done(task: Any = None, args: Any = None, state: Any = None, **_: Any) -> None:
    """When the search index finished each record's event. Celery sends ``task_postrun``
    after each run of a listener's task, in dispatch (tasks/broker/tracing.py) or in its own
    task; its argument is the message, as a dict."""
    if getattr(task, "name", None) != SEARCH_INDEX or state != "SUCCESS" or not args:
        return
    message = args[0]
    if isinstance(message, Mapping):
        _note(INDEXED_KEY, message.get("impacted_records") or message.get("impacted_objects") or [])
