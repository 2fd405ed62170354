"""What the worker rows count, so that each checks what it measured: every listener of the bench
worker and the raw Celery task do one Redis command per run (``INCRBY``: by one, or by the
number of events of the batch listener's run) on a key of its own, in the bench's Redis.

Both sides read this module: the workers (bench/listeners.py, bench/raw_celery.py), which
count, and bench/workers.py, which compares the counts with the events it sent. The workers
find the Redis to count in ``$BENCH_COUNTS_URL``.
"""

from __future__ import annotations

import functools
import os

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


@functools.cache
def _client() -> redis.Redis:
    # Made on the first count, in the pool process that counts: never shared across a fork.
    return redis.Redis.from_url(os.environ["BENCH_COUNTS_URL"])


def count(name: str, events: int = 1) -> None:
    """Count ``events`` more received by ``name``: one Redis command."""
    _client().incrby(key(name), events)
