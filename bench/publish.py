"""2. and 3. The cost of publishing: one event by raw RPUSH, by Celery's ``send_task`` and by
notifier, then one request that changes 100 records; ``--profile`` shows where the time goes."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench.measure import Row, percentile, timed, us
from bench.senders import celery_sender, event, subscriber
from notifier.wire.message import encode
from tests.support.processes import RedisServer


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
