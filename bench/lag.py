"""7. Lag: the example app written at a steady rate, in process, and the time from each write's
commit to its event in a listener, on a worker of two processes whose listeners are the
built-in search index and a recorder (bench/lag_listeners.py).

It starts a redis-server of its own, a celery worker (``-c 2``) and the example app's writers
(bench/steady.py: two processes that each build the app from examples/articles.ini and call its
WSGI callable from four threads, on one SQLite file) twice: with notifier's outbox (the demo's
setting: messages commit with the data, the outbox's thread publishes them), then without (the
subscriber publishes after the commit, in the request). At each rate the writers write
``POST /articles`` open loop: write ``n`` is due at ``t0 + n / rate`` and sent by whichever
thread is free, whether or not the earlier ones were answered. A write's commit time is when
its WSGI call returned (after pyramid_tm's commit); its lag is when the recorder received its
event, minus that. Each rate checks what it measured, else says FAILED and why: every write
answered 201, the recorder received each record once and nothing else, the search index ran
once per record and holds each one, the outbox is empty, no dead letter was written.
"""

from __future__ import annotations

import collections
import os
import re
import sqlite3
import statistics
import uuid
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from bench.drain import worker_idle
from bench.lag_listeners import INDEXED_KEY, RECEIVED_KEY, RECORDER, RESOURCE, SEARCH_INDEX, clock
from bench.measure import Row, ms, percentile
from bench.steady import Writers, Writes
from notifier.outbox import TABLE
from tasks.dead_letters import DeadLetters
from tasks.listeners.registry import LISTENER_QUEUE
from tests.support.processes import CeleryWorker, RedisServer, wait_until

RATES = (100, 300, 1000)
#: The example app's two ways to publish: with the outbox (the demo's), without.
PUBLISHING = {"outbox": "true", "after commit": "false"}
#: How long the listeners have, after the last write, to receive every event.
SETTLE = 30.0
#: What a failed row quotes of the writers' logs: a traceback's last line, a logged warning.
ERROR = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b| (WARNING|ERROR|CRITICAL) ")


class Deployment:
    """The processes of the rows: a redis-server (db 0: the broker and the dead letters; db 3:
    what the listeners note), the worker, and the example app's writers (:meth:`writers`)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory
        self._started = ExitStack()  # what stop() stops, the last started first
        try:
            self.server = RedisServer(directory)
            self._started.callback(self.server.stop)
            self.broker = redis.Redis.from_url(self.server.url)
            lag_url = self.server.url.rsplit("/", 1)[0] + "/3"
            self.notes = redis.Redis.from_url(lag_url)
            self.dead_letters = DeadLetters(self.broker)
            self.index_path = directory / "search-index.sqlite3"
            self.env = {
                "CELERY_BROKER_URL": self.server.url,
                "NOTIFIER_DEAD_LETTERS_URL": self.server.url,
                "NOTIFIER_ORDER_URL": self.server.url,
                "NOTIFIER_LISTENERS": "bench.lag_listeners",
                "NOTIFIER_SEARCH_RESOURCES": RESOURCE,
                "NOTIFIER_SEARCH_INDEX": str(self.index_path),
                "BENCH_LAG_URL": lag_url,
            }
            self.worker = CeleryWorker(directory, self.env, concurrency=2, name="bench-lag-worker")
            self._started.callback(self.worker.stop)
        except BaseException:
            self._started.close()
            raise
        listener_queues = [LISTENER_QUEUE.format(name=name) for name in (RECORDER, SEARCH_INDEX)]
        self.queues = ["notifier", *listener_queues]

    def writers(self, publishing: str) -> tuple[Writers, Path]:
        """The example app's writers, publishing as :data:`PUBLISHING` says, and their database
        (``<publishing>/articles.sqlite3``, one file for every writer); stopped with the
        others."""
        directory = self.directory / publishing.replace(" ", "-")
        directory.mkdir()
        database = directory / "articles.sqlite3"
        settings = {
            "sqlalchemy.url": f"sqlite:///{database}",
            "search.index": str(self.index_path),
            # The ini file's broker is the shared Redis of port 6379: never the bench's.
            "notifier.broker_url": self.server.url,
            "notifier.outbox": PUBLISHING[publishing],
            "notifier.spool_dir": str(directory / "spool-{writer}"),
        }
        writers = Writers(directory, settings, {**os.environ, **self.env})
        self._started.callback(writers.stop)
        return writers, database

    def idle(self) -> bool:
        return worker_idle(self.broker, self.queues)

    def processes(self, writers: Writers) -> dict[str, list[psutil.Process]]:
        worker = psutil.Process(self.worker.pid)
        return {
            "writers": [psutil.Process(pid) for pid in writers.pids],
            "worker": [worker, *worker.children(recursive=True)],
            "redis": [psutil.Process(self.server.pid)],
        }

    def stop(self) -> None:
        self._started.close()


def cpu_seconds(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """The CPU seconds each group of ``processes`` used so far, and the machine's others."""

    def used(process: psutil.Process) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    seconds = {name: sum(used(p) for p in group) for name, group in processes.items()}
    machine = psutil.cpu_times()
    busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    seconds["others"] = busy - sum(seconds.values())
    return seconds


def notes(client: redis.Redis, key: str) -> dict[str, list[float]]:
    """Each record's times in the list ``key`` (bench/lag_listeners.py)."""
    times: dict[str, list[float]] = collections.defaultdict(list)
    for raw in client.lrange(key, 0, -1):
        record_id, at = (raw.decode() if isinstance(raw, bytes) else raw).split()
        times[record_id].append(float(at))
    return times


def indexed(path: Path, prefix: str) -> set[str]:
    """The ids of the records under ``prefix`` that the search index holds."""
    with closing(sqlite3.connect(path, timeout=30)) as connection:
        rows = connection.execute(
            "SELECT record_id FROM records WHERE resource_name = ? AND NOT deleted "
            "AND record_id LIKE ?",
            (RESOURCE, f"{prefix}-%"),
        ).fetchall()
    return {row[0] for row in rows}


def outbox_rows(database: Path) -> int:
    """The rows left in the example app's outbox table (none without the outbox)."""
    with closing(sqlite3.connect(database, timeout=30)) as connection:
        if not connection.execute(f"SELECT 1 FROM sqlite_master WHERE name = '{TABLE}'").fetchone():
            return 0
        return int(connection.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


def once_each(what: str, times: dict[str, list[float]], ids: list[str]) -> list[str]:
    """What ``times`` (each record's notes) says went other than once per record of ``ids``."""
    expected = set(ids)
    missing = [n for n in ids if n not in times]
    twice = [n for n in ids if len(times.get(n, ())) > 1]
    others = [n for n in times if n not in expected]
    problems = []
    if missing:
        problems.append(f"{what} missed {len(missing):,} of {len(ids):,} ({missing[0]}...)")
    if twice:
        problems.append(f"{what} got {len(twice):,} records more than once ({twice[0]}...)")
    if others:
        problems.append(f"{what} got {len(others):,} records not written ({others[0]}...)")
    return problems


@dataclass
class Run:
    """What one rate measured: the writes, what each listener noted of each record, the
    dead letters before, the CPU each process group used while writing (seconds) and the
    machine's load average (one minute) when it started."""

    publishing: str
    writers: Writers
    database: Path
    writes: Writes
    received: dict[str, list[float]]
    index_done: dict[str, list[float]]
    letters_before: int
    cpu: dict[str, float]
    elapsed: float
    load: float


def measure(
    deployment: Deployment,
    writers: Writers,
    database: Path,
    publishing: str,
    rate: float,
    seconds: float,
) -> Run:
    """Write at ``rate`` for ``seconds``, and wait for the listeners to note every write."""
    wait_until(deployment.idle, 60, "the worker idle")
    deployment.notes.delete(RECEIVED_KEY, INDEXED_KEY)
    letters = len(deployment.dead_letters)
    prefix = f"lag{rate:.0f}-{uuid.uuid4().hex[:6]}"
    processes = deployment.processes(writers)
    load = os.getloadavg()[0]
    cpu_before, started = cpu_seconds(processes), clock()
    writes = writers.write(rate, seconds, prefix)
    # max(0, ...): the machine's counters and the processes' are not read at the same instant.
    cpu = {k: max(0.0, v - cpu_before[k]) for k, v in cpu_seconds(processes).items()}
    elapsed = clock() - started
    answered = len(writes.answered())
    try:
        wait_until(lambda: deployment.notes.llen(RECEIVED_KEY) >= answered, SETTLE, "received")
        wait_until(lambda: deployment.notes.llen(INDEXED_KEY) >= answered, SETTLE, "indexed")
        wait_until(deployment.idle, SETTLE, "the worker idle")
        wait_until(lambda: outbox_rows(database) == 0, 5, "the outbox empty")
    except TimeoutError:
        pass  # the checks say what is missing
    received = notes(deployment.notes, RECEIVED_KEY)
    index_done = notes(deployment.notes, INDEXED_KEY)
    return Run(
        publishing, writers, database, writes, received, index_done, letters, cpu, elapsed, load
    )


def check(deployment: Deployment, run: Run) -> list[str]:
    """What went other than expected: a write failed, a listener missed a record or got it
    twice, the search index lacks one, the outbox holds rows, a dead letter was written."""
    writes, problems = run.writes, []
    if writes.errors:
        problems.append(f"{len(writes.errors):,} writes failed ({writes.errors[0]})")
        errors = [line for line in run.writers.output().splitlines() if ERROR.search(line)]
        if errors:
            problems.append(f"the writers' log: {errors[-1][:200]}")
    committed = [n for n, _ in writes.answered()]
    if not committed:
        problems.append("no write answered")
    problems += once_each("the recorder", run.received, committed)
    problems += once_each("the search index listener", run.index_done, committed)
    absent = set(committed) - indexed(deployment.index_path, writes.prefix)
    if absent:
        problems.append(f"the search index lacks {len(absent):,} records")
    if (rows := outbox_rows(run.database)) != 0:
        problems.append(f"{rows:,} rows left in the outbox")
    if (letters := len(deployment.dead_letters) - run.letters_before) != 0:
        problems.append(f"{letters:,} dead letters")
    return problems


def row(run: Run, problems: list[str]) -> Row:
    """The row of ``run``: the rate asked and achieved, the recorder's lag, and in the last
    column its longest, when the listeners were done, the search index's own lag, the writes'
    latency, the CPU each process group used (of one CPU; others: the rest of the machine) and
    the load average."""
    writes = run.writes
    achieved = writes.achieved()
    name = (
        f"7. lag ({run.publishing}): {writes.rate:,.0f} writes/s asked, {achieved:,.0f} "
        "achieved; search index + recorder"
    )
    if problems:
        return name, "FAILED: " + "; ".join(problems), "-", "-"
    answered = writes.answered()
    lags = [run.received[n][0] - at for n, at in answered]
    index_lags = [run.index_done[n][0] - at for n, at in answered]
    latency = [
        at - sent
        for sent, at in zip(writes.sent, writes.committed, strict=True)
        if sent is not None and at is not None
    ]
    last_commit = max(at for _, at in answered)
    done = max(times[0] for notes in (run.received, run.index_done) for times in notes.values())
    unsent = writes.sent.count(None)
    busy = ", ".join(f"{name} {seconds / run.elapsed:.0%}" for name, seconds in run.cpu.items())
    return (
        name,
        f"median {ms(statistics.median(lags))}",
        f"p99 {ms(percentile(lags, 0.99))}",
        (f"{unsent:,} of {len(writes.ids):,} not sent; " if unsent else "")
        + f"max {ms(max(lags))}; listeners done {done - last_commit:,.1f} s after the last "
        f"commit; search index: median {ms(statistics.median(index_lags))}, "
        f"p99 {ms(percentile(index_lags, 0.99))}; write p99 {ms(percentile(latency, 0.99))}; "
        f"CPU {busy}; load {run.load:.1f}",
    )


def bench_lag(directory: Path, seconds: float = 7.0) -> list[Row]:
    """One row per way to publish and rate of :data:`RATES`, each ``seconds`` of writes (see
    the module's doc)."""
    deployment = Deployment(directory / "lag")
    rows = []
    try:
        for publishing in PUBLISHING:
            writers, database = deployment.writers(publishing)
            # The first writes pay for connections, imports and the search index's schema.
            measure(deployment, writers, database, publishing, 50, 1)
            for rate in RATES:
                run = measure(deployment, writers, database, publishing, rate, seconds)
                rows.append(row(run, check(deployment, run)))
            writers.stop()
        return rows
    finally:
        deployment.stop()
