"""4. and 5. Workers: the events per second a celery worker delivers to notifier's listeners,
against a plain Celery app's no-op task and the physical limit (a bare loop over Redis), and
its memory while it takes the delete of 100 000 records.

Each round sends events of their own (an event id, a request id and a record of their own), so
that no message is mistaken for another's redelivery. Each row checks what it measured, else
says FAILED and why: every listener (the raw task) received each event once, counted
(bench/counting.py), no other counted anything, no dead letter was written, and the raw Celery
app has the settings of notifier's workers; the limit's loops handled every message."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import psutil
import redis

from bench.counting import BATCH_LISTENER, BATCH_RESOURCE, LISTENERS, RAW_TASK
from bench.drain import Drain, Ledger, Limit, RawCeleryWorker
from bench.measure import RECORD, Row
from bench.raw_celery import RAW_QUEUE
from bench.senders import PAYLOAD, celery_sender, subscriber
from notifier.publisher import CeleryPublisher
from notifier.wire.message import Message, encode
from tasks.dead_letters import DeadLetters
from tasks.listeners.registry import LISTENER_QUEUE
from tests.support.processes import CeleryWorker, RedisServer, wait_until

RAW = "raw Celery task (no-op), plain Celery app"
LIMIT_ONE = "limit: bare loop, BRPOP + json.loads + no-op, 2 processes"
LIMIT_BATCH = "limit: the same, popping up to 100 per Lua call"
#: The queue the limit's loops pop, which no worker consumes.
LIMIT_QUEUE = "bench.limit"
LIMIT_PROCESSES = 2


def messages(resource_name: str, count: int) -> list[Message]:
    """``count`` events on ``resource_name``, each its own: event id, request id, record."""
    batch = uuid.uuid4().hex[:8]
    result = []
    for n in range(count):
        record = {**RECORD, "id": f"{RECORD['id']}-{batch}-{n}"}
        payload = {**PAYLOAD, "resource_name": resource_name, "record_id": record["id"]}
        result.append(encode(payload, [{"new": record}], [0], uuid.uuid4().hex))
    return result


@dataclass
class Scenario:
    """One row: what a round fills (in the staging database) and where, what it must count
    (counter: events), and for the limit's loops the messages they pop per call."""

    name: str
    fill: Callable[[], None]
    queue: str
    expected: Mapping[str, int]
    limit_batch: int | None = None
    rates: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def median(self) -> float | None:
        return None if self.failures else statistics.median(self.rates)

    def figures(self) -> tuple[str, str]:
        if self.failures:
            more = f" (and {len(self.failures) - 1} more rounds)" if len(self.failures) > 1 else ""
            return f"FAILED: {self.failures[0]}{more}", "-"
        return f"{statistics.median(self.rates):,.0f} events/s", (
            f"{min(self.rates):,.0f} events/s (slowest round)"
        )


def run_round(scenario: Scenario, drain: Drain, ledger: Ledger, limit: Limit, events: int) -> None:
    before = ledger.snapshot()
    if scenario.limit_batch is None:
        counted = ledger.counted(before, scenario.expected)
        seconds, handled = drain.run(scenario.fill, scenario.queue, counted), events
    else:
        seconds, handled = limit.run(scenario.fill, scenario.queue, scenario.limit_batch)
    failure = ledger.failure(before, scenario.expected)
    if handled != events:
        failure = f"the loops handled {handled:,} of {events:,}" + (
            f"; {failure}" if failure else ""
        )
    if failure:
        scenario.failures.append(failure)
    else:
        scenario.rates.append(events / seconds)


def bench_workers(server: RedisServer, directory: Path, rounds: int, events: int) -> list[Row]:
    counts_url = server.url.rsplit("/", 1)[0] + "/2"
    env = {
        "CELERY_BROKER_URL": server.url,
        "BENCH_COUNTS_URL": counts_url,
        "NOTIFIER_LISTENERS": "bench.listeners",
        "NOTIFIER_SEARCH_RESOURCES": "bench_memory",
        "NOTIFIER_SEARCH_INDEX": str(directory / "search-index.sqlite3"),
    }
    worker = CeleryWorker(directory, env, concurrency=2, name="bench-worker")
    raw_worker: RawCeleryWorker | None = None
    try:
        raw_worker = RawCeleryWorker(
            directory, {"CELERY_BROKER_URL": server.url, "BENCH_COUNTS_URL": counts_url}, worker
        )
        listener_queues = [
            LISTENER_QUEUE.format(name=name)
            for name in (*(n for names in LISTENERS.values() for n in names), BATCH_LISTENER)
        ]
        drain = Drain(server, ["notifier", RAW_QUEUE, *listener_queues])
        ledger = Ledger(redis.Redis.from_url(counts_url), DeadLetters(drain.worker_db))
        limit = Limit(drain, directory, counts_url, LIMIT_PROCESSES)
        staging_publisher = CeleryPublisher(drain.staging_url, 5)
        staging_celery = celery_sender(drain.staging_url)

        def raw_fill() -> None:
            for message in messages("bench_one", events):
                staging_celery.send_task(RAW_TASK, args=[message.as_dict()], queue=RAW_QUEUE)

        def notifier_fill(resource_name: str, queue: str = "notifier") -> Callable[[], None]:
            def fill() -> None:
                for message in messages(resource_name, events):
                    staging_publisher.publish(message, queue)

            return fill

        scenarios = [
            Scenario(RAW, raw_fill, RAW_QUEUE, {RAW_TASK: events}),
            *(
                Scenario(
                    f"notifier, {len(names)} listener{'s' if len(names) > 1 else ''}",
                    notifier_fill(resource_name),
                    "notifier",
                    dict.fromkeys(names, events),
                )
                for resource_name, names in LISTENERS.items()
            ),
            Scenario(
                "notifier, 1 batch listener (batch=100)",
                notifier_fill(BATCH_RESOURCE),
                "notifier",
                {BATCH_LISTENER: events},
            ),
            Scenario(LIMIT_ONE, notifier_fill("bench_one", LIMIT_QUEUE), LIMIT_QUEUE, {}, 1),
            Scenario(LIMIT_BATCH, notifier_fill("bench_one", LIMIT_QUEUE), LIMIT_QUEUE, {}, 100),
        ]
        for _ in range(rounds):
            for scenario in scenarios:
                run_round(scenario, drain, ledger, limit, events)
        rows = table(scenarios)
        rows.append(bench_memory(worker, drain, directory))
        staging_publisher.close()
        staging_celery.close()
        return rows
    finally:
        if raw_worker is not None:
            raw_worker.stop()
        worker.stop()


def table(scenarios: list[Scenario]) -> list[Row]:
    """The rows: each rate also as a ratio of raw Celery's and, for notifier's, as a fraction
    of the limit's (the BRPOP loop's and the batch loop's)."""
    medians = {scenario.name: scenario.median() for scenario in scenarios}
    raw, one, batch = medians[RAW], medians[LIMIT_ONE], medians[LIMIT_BATCH]
    rows: list[Row] = []
    for scenario in scenarios:
        rate = medians[scenario.name]
        ratios = []
        if rate is not None and raw is not None:
            ratios.append(f"{rate / raw:.2f}x raw Celery")
        if rate is not None and not scenario.name.startswith("limit"):
            if one is not None:
                ratios.append(f"{rate / one:.3f} of BRPOP limit")
            if batch is not None:
                ratios.append(f"{rate / batch:.3f} of batch limit")
        rows.append((f"4. worker: {scenario.name}", *scenario.figures(), ", ".join(ratios) or "-"))
    return rows


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
