"""The physical limit of the worker rows: a bare Python loop over Redis, no Celery, no
acknowledgement, no listener; what a Python worker on this machine could not beat.

``python -m bench.limit QUEUE_URL REPORT_URL QUEUE BATCH``: pop messages from ``QUEUE`` (one
``BRPOP`` each when ``BATCH`` is 1, else a Lua script that pops up to ``BATCH`` per call),
decode each (``json.loads`` of the task message, then of its body) and call a no-op function
with the event, until the queue is empty; then push ``{"handled", "finished"}`` onto
``bench:limit:reports`` at ``REPORT_URL`` and exit. ``finished`` is when the last message was
handled, on ``CLOCK_MONOTONIC``: one clock for every process of the machine, so the bench
subtracts the moment it moved the messages in. It says it is ready (``INCR
bench:limit:ready``) before it waits for the first message.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import redis

READY_KEY = "bench:limit:ready"
REPORTS_KEY = "bench:limit:reports"
#: How long a process waits for its first message (the bench fills the queue, then moves it).
FIRST_WAIT = 60
#: Once the messages came, an empty queue stays empty: this only ends the last BRPOP.
LAST_WAIT = 0.05


def clock() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def listener(event: Any) -> None:
    """The no-op the loop calls with each event."""


def handle(raw: bytes | str) -> None:
    envelope = json.loads(raw)
    args = json.loads(envelope["body"])[0]
    listener(args[0])


def main(argv: list[str]) -> int:
    queue_url, report_url, queue, batch_text = argv
    batch = int(batch_text)
    client = redis.Redis.from_url(queue_url)
    report = redis.Redis.from_url(report_url)
    pop = client.register_script(Path(__file__).with_name("limit_pop.lua").read_text())
    handled, finished = 0, None
    report.incr(READY_KEY)
    first = client.brpop([queue], timeout=FIRST_WAIT)
    if first is not None:
        handle(first[1])
        handled, finished = 1, clock()
        while True:
            if batch == 1:
                popped = client.brpop([queue], timeout=LAST_WAIT)
                items = [] if popped is None else [popped[1]]
            else:
                items = pop(keys=[queue], args=[batch]) or []
            if not items:
                break
            for raw in items:
                handle(raw)
            handled += len(items)
            finished = clock()
    report.rpush(REPORTS_KEY, json.dumps({"handled": handled, "finished": finished}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
