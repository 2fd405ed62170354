"""4. and 5. Workers: the events per second a celery worker delivers to notifier's listeners,
against a raw Celery task, and its memory while it takes the delete of 100 000 records."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import psutil
import redis

from bench.listeners import RAW_QUEUE
from bench.measure import Row
from bench.senders import PAYLOAD, celery_sender, event, subscriber
from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tasks.listeners.registry import LISTENER_QUEUE
from tests.support.processes import CeleryWorker, RedisServer, wait_until


class Drain:
    """Events per second a worker takes from publish to every listener done: the messages are
    published first to a Redis database the worker does not read, then moved (MOVE, atomic)
    into its own; the clock runs from the move until its queues and unacknowledged messages
    are empty."""

    def __init__(self, server: RedisServer, queues: list[str]) -> None:
        self.queues = queues
        self.worker_db = redis.Redis.from_url(server.url)
        self.staging_url = server.url.rsplit("/", 1)[0] + "/1"
        self.staging = redis.Redis.from_url(self.staging_url)

    def idle(self) -> bool:
        with self.worker_db.pipeline(transaction=False) as pipe:
            pipe.hlen("unacked")
            pipe.exists(*self.queues)
            unacked, queued = pipe.execute()
        return bool(unacked == 0 and queued == 0)

    def run(self, fill: Callable[[], None], queue: str) -> float:
        wait_until(self.idle, 60, "the worker idle")
        fill()
        started = time.perf_counter()
        assert self.staging.move(queue, 0), f"{queue} in the worker's database already"
        deadline = started + 300
        while not self.idle():
            if time.perf_counter() > deadline:
                raise TimeoutError("the worker did not drain its queues within 300 s")
            time.sleep(0.002)
        return time.perf_counter() - started


def bench_workers(server: RedisServer, directory: Path, rounds: int, events: int) -> list[Row]:
    env = {
        "CELERY_BROKER_URL": server.url,
        "NOTIFIER_LISTENERS": "bench.listeners",
        "NOTIFIER_SEARCH_RESOURCES": "bench_memory",
        "NOTIFIER_SEARCH_INDEX": str(directory / "search-index.sqlite3"),
    }
    worker = CeleryWorker(directory, env, concurrency=2, name="bench-worker")
    try:
        listener_queues = [
            LISTENER_QUEUE.format(name=f"bench.listeners.{name}")
            for name in ("alone", "first", "second", "third", "bulk")
        ]
        drain = Drain(server, ["notifier", RAW_QUEUE, *listener_queues])
        staging_publisher = CeleryPublisher(drain.staging_url, 5)
        staging_celery = celery_sender(drain.staging_url)
        message = {
            name: encode(event(name).payload, event(name).impacted_records, [0], "r")
            for name in ("bench_one", "bench_three", "bench_bulk")
        }

        def raw_fill() -> None:
            for _ in range(events):
                staging_celery.send_task(
                    "bench.raw_task", args=[message["bench_one"].as_dict()], queue=RAW_QUEUE
                )

        def notifier_fill(resource_name: str) -> Callable[[], None]:
            def fill() -> None:
                for _ in range(events):
                    staging_publisher.publish(message[resource_name], "notifier")

            return fill

        scenarios = {
            "raw Celery task (no-op)": (raw_fill, RAW_QUEUE),
            "notifier, 1 listener": (notifier_fill("bench_one"), "notifier"),
            "notifier, 3 listeners": (notifier_fill("bench_three"), "notifier"),
            "notifier, 1 batch listener (batch=100)": (notifier_fill("bench_bulk"), "notifier"),
        }
        rates: dict[str, list[float]] = {name: [] for name in scenarios}
        for _ in range(rounds):
            for name, (fill, queue) in scenarios.items():
                rates[name].append(events / drain.run(fill, queue))
        raw = statistics.median(rates["raw Celery task (no-op)"])
        rows: list[Row] = [
            (
                f"4. worker: {name}",
                f"{statistics.median(values):,.0f} events/s",
                f"{min(values):,.0f} events/s (slowest round)",
                f"{statistics.median(values) / raw:.2f}x raw Celery",
            )
            for name, values in rates.items()
        ]
        rows.append(bench_memory(worker, drain, directory))
        staging_publisher.close()
        staging_celery.close()
        return rows
    finally:
        worker.stop()


def bench_memory(worker: CeleryWorker, drain: Drain, directory: Path) -> Row:
    """Peak RSS of the worker (and its pool processes) while it takes the delete of a
    collection of 100 000 records (notifier.max_message_size splits it into parts)."""
    records = 100_000
    payload = {**PAYLOAD, "action": "delete", "resource_name": "bench_memory"}
    impacted = [
        {
            "new": {"id": f"r{n}", "last_modified": 1795509277829, "deleted": True},
            "old": {"id": f"r{n}", "last_modified": 1795509277828, "title": f"record {n}"},
        }
        for n in range(records)
    ]
    big = SimpleNamespace(
        payload=payload, impacted_records=impacted, positions=list(range(records)), request=None
    )
    process = psutil.Process(worker.pid)

    def rss() -> tuple[int, int]:
        processes = [process, *process.children(recursive=True)]
        sizes = [p.memory_info().rss for p in processes]
        return sum(sizes), max(sizes)

    before, _ = rss()
    peak_total, peak_one = before, 0
    notifier = subscriber(drain.staging_url, directory)
    parts_before = drain.staging.llen("notifier")
    notifier(big)
    parts = drain.staging.llen("notifier") - parts_before
    wait_until(drain.idle, 60, "the worker idle")
    started = time.perf_counter()
    drain.staging.move("notifier", 0)
    while True:
        total, one = rss()
        peak_total, peak_one = max(peak_total, total), max(peak_one, one)
        if drain.idle():
            break
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    return (
        f"5. worker RSS, delete of {records:,} records ({parts} messages)",
        f"{peak_total / 2**20:,.0f} MiB peak, all processes",
        f"{peak_one / 2**20:,.0f} MiB peak, one process",
        f"{(peak_total - before) / 2**20:+,.0f} MiB over idle; {elapsed:.1f} s",
    )
