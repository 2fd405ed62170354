"""4. and 5. Workers: the events per second a celery worker delivers to notifier's listeners,
against a plain Celery app's no-op task and the physical limit (a bare loop over Redis), and
its memory while it takes the delete of 100 000 records.

Each round sends events of their own (an event id, a request id and a record of their own), so
that no message is mistaken for another's redelivery. Each row checks what it measured, else
says FAILED and why: every listener (the raw task) received each event once, counted
(bench/counting.py), no other counted anything, no dead letter was written, and the raw Celery
app has the settings of notifier's workers; the limit's loops handled every message.

The row with a slow neighbour (:func:`run_beside_slow`) times the two fast listeners of three,
and stops the clock when they counted every event; then it purges the slow one's queue, and
checks that the slow one ran each event that was not purged, once."""

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
from celery import Celery

from bench.counting import (
    BATCH_LISTENER,
    BATCH_RESOURCE,
    BESIDE_SLOW,
    LISTENERS,
    RAW_TASK,
    SLOW_LISTENER,
    SLOW_RESOURCE,
)
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
#: The row with a slow neighbour, and the row of its two fast listeners without it.
BESIDE_SLOW_ROW = "notifier, 3 listeners, one of them 50 ms per event"
WITHOUT_SLOW_ROW = "notifier, 2 listeners"
#: The most events of a round of that row: a multiple of what the pool's two processes take
#: in a dispatch task each (2 x 100, tasks/dispatch/run.py), so that they share them evenly as
#: in the 2-listener row; and the slow listener's whole backlog, which a round does not wait
#: for but may come close to (bench/README.md), is 400 x 50 ms over the 2 processes: 10 s.
BESIDE_SLOW_EVENTS = 400
#: The row with task events on, and how long the worker's pool takes to see them turned on or
#: off (tasks/broker/worker_view.py writes the main process's view every 0.05 s).
TASK_EVENTS_ROW = "notifier, 1 listener, task events on (Flower watching)"
WORKER_VIEW_SETTLES = 0.3


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
    (counter: events), for the limit's loops the messages they pop per call, and for the row
    with a slow neighbour its listener (not in ``expected``: :func:`run_beside_slow`) and its
    events per round, when not the section's."""

    name: str
    fill: Callable[[], None]
    queue: str
    expected: Mapping[str, int]
    limit_batch: int | None = None
    slow: str | None = None
    events: int | None = None
    #: Whether the worker sends task events during the row's rounds.
    task_events: bool = False
    rates: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    slow_runs: list[int] = field(default_factory=list)  # the slow listener's, in each round

    def median(self) -> float | None:
        return None if self.failures else statistics.median(self.rates)

    def figures(self) -> tuple[str, str]:
        if self.failures:
            more = f" (and {len(self.failures) - 1} more rounds)" if len(self.failures) > 1 else ""
            return f"FAILED: {self.failures[0]}{more}", "-"
        return f"{statistics.median(self.rates):,.0f} events/s", (
            f"{min(self.rates):,.0f} events/s (slowest round)"
        )


def run_round(
    scenario: Scenario,
    drain: Drain,
    ledger: Ledger,
    limit: Limit,
    events: int,
    control: Celery | None = None,
) -> None:
    if scenario.task_events and control is not None:
        control.control.enable_events()
        time.sleep(WORKER_VIEW_SETTLES)
        try:
            _run_round(scenario, drain, ledger, limit, events)
        finally:
            control.control.disable_events()
            time.sleep(WORKER_VIEW_SETTLES)
        return
    _run_round(scenario, drain, ledger, limit, events)


def _run_round(scenario: Scenario, drain: Drain, ledger: Ledger, limit: Limit, events: int) -> None:
    events = scenario.events or events
    if scenario.slow is not None:
        run_beside_slow(scenario, scenario.slow, drain, ledger, events)
        return
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


def run_beside_slow(
    scenario: Scenario, slow: str, drain: Drain, ledger: Ledger, events: int, *, timed: bool = True
) -> None:
    """A round of the row with a slow neighbour: the clock stops once the listeners of
    ``scenario.expected`` counted every event (the slow one would take events x 50 ms over
    the pool's processes); not ``timed``, the round before the first (:func:`bench_workers`),
    checked, its rate not kept. Then the slow listener's queue is purged, and the worker
    settles: every task of it that the worker took (its pool's runs, the messages it holds,
    all in the unacknowledged hash from the instant they leave the queue:
    tasks/broker/consuming.py) has run. Each slow task was sent before its event's fast
    listeners ran (dispatch sends the listeners' tasks first: tasks/dispatch/run.py), so none
    comes after the purge: the slow listener ran every event not purged, exactly once
    (counted + purged == events)."""
    before = ledger.snapshot()
    seconds = drain.run_until(
        scenario.fill, scenario.queue, ledger.counted(before, scenario.expected)
    )
    purged = drain.purge(LISTENER_QUEUE.format(name=slow))
    drain.settle(ledger.snapshot)
    ran = ledger.snapshot()[0][slow] - before[0][slow]
    problems = []
    if ran + purged != events or ran > events:
        problems.append(f"the slow listener ran {ran:,} and {purged:,} were purged, of {events:,}")
    # Every counter but the slow one's exact, and no dead letter.
    failure = ledger.failure(before, {**scenario.expected, slow: ran})
    if failure:
        problems.append(failure)
    if problems:
        scenario.failures.append(("" if timed else "the round before: ") + "; ".join(problems))
    elif timed:
        scenario.rates.append(events / seconds)
        scenario.slow_runs.append(ran)


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
            for name in (
                *(n for names in LISTENERS.values() for n in names),
                BATCH_LISTENER,
                *BESIDE_SLOW,
                SLOW_LISTENER,
            )
        ]
        drain = Drain(server, ["notifier", RAW_QUEUE, *listener_queues])
        ledger = Ledger(redis.Redis.from_url(counts_url), DeadLetters(drain.worker_db))
        limit = Limit(drain, directory, counts_url, LIMIT_PROCESSES)
        staging_publisher = CeleryPublisher(drain.staging_url, 5)
        staging_celery = celery_sender(drain.staging_url)
        control = Celery(broker=server.url, set_as_current=False)

        def raw_fill() -> None:
            for message in messages("bench_one", events):
                staging_celery.send_task(RAW_TASK, args=[message.as_dict()], queue=RAW_QUEUE)

        def notifier_fill(
            resource_name: str, queue: str = "notifier", count: int = events
        ) -> Callable[[], None]:
            def fill() -> None:
                for message in messages(resource_name, count):
                    staging_publisher.publish(message, queue)

            return fill

        beside_slow = min(events, BESIDE_SLOW_EVENTS)
        beside = Scenario(
            BESIDE_SLOW_ROW,
            notifier_fill(SLOW_RESOURCE, count=beside_slow),
            "notifier",
            dict.fromkeys(BESIDE_SLOW, beside_slow),
            slow=SLOW_LISTENER,
            events=beside_slow,
        )
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
                TASK_EVENTS_ROW,
                notifier_fill("bench_one"),
                "notifier",
                dict.fromkeys(LISTENERS["bench_one"], events),
                task_events=True,
            ),
            Scenario(
                "notifier, 1 batch listener (batch=100)",
                notifier_fill(BATCH_RESOURCE),
                "notifier",
                {BATCH_LISTENER: events},
            ),
            beside,
            Scenario(LIMIT_ONE, notifier_fill("bench_one", LIMIT_QUEUE), LIMIT_QUEUE, {}, 1),
            Scenario(LIMIT_BATCH, notifier_fill("bench_one", LIMIT_QUEUE), LIMIT_QUEUE, {}, 100),
        ]
        # Each pool process runs a listener in dispatch until it timed it (tasks/dispatch/
        # pace.py): 50 ms once per process for the slow one, once in a worker's life. A round
        # before the first, checked and not timed, has each learn it (each takes a dispatch
        # task of it), so that the row measures a worker that knows its listeners.
        run_beside_slow(beside, SLOW_LISTENER, drain, ledger, beside_slow, timed=False)
        for _ in range(rounds):
            for scenario in scenarios:
                run_round(scenario, drain, ledger, limit, events, control)
        rows = table(scenarios)
        rows.append(bench_memory(worker, drain, directory))
        staging_publisher.close()
        staging_celery.close()
        control.close()
        return rows
    finally:
        if raw_worker is not None:
            raw_worker.stop()
        worker.stop()


def table(scenarios: list[Scenario]) -> list[Row]:
    """The rows: each rate also as a ratio of raw Celery's and, for notifier's, as a fraction
    of the limit's (the BRPOP loop's and the batch loop's); the row with a slow neighbour as a
    fraction of its fast listeners' rate without it (the 2-listener row's)."""
    medians = {scenario.name: scenario.median() for scenario in scenarios}
    raw, one, batch = medians[RAW], medians[LIMIT_ONE], medians[LIMIT_BATCH]
    rows: list[Row] = []
    for scenario in scenarios:
        rate = medians[scenario.name]
        ratios = []
        if rate is not None and scenario.slow is not None:
            without = medians[WITHOUT_SLOW_ROW]
            if without is not None:
                ratios.append(f"{rate / without:.2f} of the 2-listener row")
            ran, events = statistics.median(scenario.slow_runs), scenario.events
            ratios.append(f"the slow one ran {ran:,.0f} of {events:,}, the rest purged")
        if rate is not None and raw is not None:
            ratios.append(f"{rate / raw:.2f}x raw Celery")
        if rate is not None and scenario.slow is None and not scenario.name.startswith("limit"):
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
