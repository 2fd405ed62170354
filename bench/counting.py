"""What the worker rows count, so that each checks what it measured: every listener of the bench
worker and the raw Celery task add one to a tally of their process (or the number of events of
the batch listener's run), and a thread of that process adds its tallies to keys of their own
in the bench's Redis (``INCRBY``, pipelined) every :data:`FLUSH_EVERY` seconds. A run costs a
dict update, not a Redis round trip: the rows measure what delivering an event costs, as the
limit's loops (bench/limit.py) do, not the latency of a command the listener sends.

Both sides read this module: the workers (bench/listeners.py, bench/raw_celery.py), which
count, and bench/workers.py, which compares the counts with the events it sent. The workers
find the Redis to count in ``$BENCH_COUNTS_URL``.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import redis

#: Each resource of the worker rows, and the names of its listeners (bench/listeners.py).
LISTENERS: dict[str, tuple[str, ...]] = {
    resource_name: tuple(f"bench.listeners.{word}_{n}" for n in range(1, count + 1))
    for resource_name, word, count in (
        ("bench_one", "one", 1),
        ("bench_two", "two", 2),
        ("bench_three", "three", 3),
        ("bench_five", "five", 5),
        ("bench_ten", "ten", 10),
    )
}
#: The resource of the batch listener, and its name.
BATCH_RESOURCE = "bench_bulk"
BATCH_LISTENER = "bench.listeners.bulk"
#: The resource of the row with a slow neighbour: two listeners that count, as the others do
#: (:data:`BESIDE_SLOW`), and one that sleeps :data:`SLOW_SECONDS` per event, then counts.
SLOW_RESOURCE = "bench_slow"
BESIDE_SLOW = ("bench.listeners.beside_slow_1", "bench.listeners.beside_slow_2")
SLOW_LISTENER = "bench.listeners.slow"
SLOW_SECONDS = 0.05
#: The raw Celery task's name (bench/raw_celery.py).
RAW_TASK = "bench.raw_task"

#: Every counter: the listeners', the batch listener's, the slow neighbour row's, the raw task's.
COUNTERS = (
    *(name for names in LISTENERS.values() for name in names),
    BATCH_LISTENER,
    *BESIDE_SLOW,
    SLOW_LISTENER,
    RAW_TASK,
)


def key(name: str) -> str:
    """The Redis key that counts the events ``name`` (a listener, the raw task) received."""
    return f"bench:runs:{name}"


#: How often a process adds its tallies to the bench's Redis: a round's clock may stop up to
#: this late, the same for every row.
FLUSH_EVERY = 0.002


class _Tally:
    """The counts of one process not yet in Redis, and the thread that adds them there."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.pending: collections.Counter[str] = collections.Counter()
        self.client = redis.Redis.from_url(os.environ["BENCH_COUNTS_URL"])
        threading.Thread(target=self._flush_forever, name="bench-tally", daemon=True).start()

    def add(self, name: str, events: int) -> None:
        with self.lock:
            self.pending[name] += events

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            with self.lock:
                pending, self.pending = self.pending, collections.Counter()
            if pending:
                with self.client.pipeline(transaction=False) as pipe:
                    for name, events in pending.items():
                        pipe.incrby(key(name), events)
                    pipe.execute()


_tally: _Tally | None = None


def count(name: str, events: int = 1) -> None:
    """Count ``events`` more received by ``name``: in Redis within :data:`FLUSH_EVERY`."""
    global _tally
    if _tally is None or _tally.pid != os.getpid():
        # Made on the first count in the pool process that counts: never shared across a fork.
        _tally = _Tally()
    _tally.add(name, events)
