"""How the worker rows (bench/workers.py) time a drain and check what it measured: the clock
(:class:`Drain`; for the row with a slow neighbour, :meth:`Drain.run_until`, then
:meth:`Drain.purge` and :meth:`Drain.settle`), the counts and dead letters compared after each
drain (:class:`Ledger`), the raw Celery worker (:class:`RawCeleryWorker`) and the bare loop of
the physical limit (:class:`Limit`, bench/limit.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
import redis

from bench.counting import COUNTERS, key
from bench.limit import READY_KEY, REPORTS_KEY, clock
from bench.raw_celery import RAW_QUEUE
from tasks.dead_letters import DeadLetters
from tests.support.processes import CeleryWorker, Process, RedisServer, wait_until

#: How long a drained worker's counts may lag behind its queues (:meth:`Drain.run`).
COUNT_WAIT = 5
#: How many polls, this many seconds apart, a settled worker stays idle with the same counts.
SETTLE_POLLS, SETTLE_EVERY = 5, 0.02


def worker_idle(broker: redis.Redis, queues: list[str]) -> bool:
    """Whether the worker on ``broker`` has nothing left: ``queues`` empty, nothing unacked."""
    with broker.pipeline(transaction=False) as pipe:
        pipe.hlen("unacked")
        pipe.exists(*queues)
        unacked, queued = pipe.execute()
    return bool(unacked == 0 and queued == 0)


class Drain:
    """Events per second a worker takes from publish to every listener done: the messages are
    published first to a Redis database the worker does not read, then moved (MOVE, atomic)
    into its own; the clock runs from the move until its queues and unacknowledged messages
    are empty."""

    def __init__(self, server: RedisServer, queues: list[str]) -> None:
        self.queues = queues
        self.worker_url = server.url
        self.worker_db = redis.Redis.from_url(server.url)
        self.staging_url = server.url.rsplit("/", 1)[0] + "/1"
        self.staging = redis.Redis.from_url(self.staging_url)

    def idle(self) -> bool:
        return worker_idle(self.worker_db, self.queues)

    def fill_and_move(self, fill: Callable[[], None], queue: str) -> float:
        """Fill ``queue`` in the staging database, move it into the worker's; return when."""
        fill()
        started = clock()
        assert self.staging.move(queue, 0), f"{queue} in the worker's database already"
        return started

    def run(self, fill: Callable[[], None], queue: str, counted: Callable[[], bool]) -> float:
        """Seconds from the move until the worker is idle and ``counted``: its listeners
        received every event. kombu's BRPOP takes a message out of its queue before it adds it
        to the unacknowledged ones (a raw Celery worker's, not notifier's: tasks/broker/), so
        an idle worker may still be about to run its last message. A worker idle for
        :data:`COUNT_WAIT` whose counts fall short is done: the ledger says what is missing."""
        wait_until(self.idle, 60, "the worker idle")
        started = self.fill_and_move(fill, queue)
        deadline, idle_since = started + 300, None
        while True:
            now = clock()
            if self.idle():
                idle_since = idle_since or now
                if counted():
                    return now - started
                if now - idle_since > COUNT_WAIT:
                    return idle_since - started
            else:
                idle_since = None
            if now > deadline:
                raise TimeoutError("the worker did not drain its queues within 300 s")
            time.sleep(0.002)

    def run_until(self, fill: Callable[[], None], queue: str, counted: Callable[[], bool]) -> float:
        """Seconds from the move until ``counted``, whatever the worker still holds: the clock
        of listeners that share their events with a slower one, stopped when they are done,
        not when it is."""
        wait_until(self.idle, 60, "the worker idle")
        started = self.fill_and_move(fill, queue)
        deadline = started + 300
        while not counted():
            if clock() > deadline:
                raise TimeoutError("the listeners did not count every event within 300 s")
            time.sleep(0.002)
        return clock() - started

    def purge(self, queue: str) -> int:
        """Delete what ``queue`` holds (its list, at once); return how many messages it held.
        What the worker took from it already, it holds in its unacknowledged messages until
        it ran them: :meth:`settle` waits for them."""
        with self.worker_db.pipeline(transaction=True) as pipe:
            pipe.llen(queue)
            pipe.delete(queue)
            purged, _ = pipe.execute()
        return int(purged)

    def settle(self, snapshot: Callable[[], object]) -> None:
        """Wait until the worker is idle, and stays idle with the same ``snapshot()`` (the
        counts) for :data:`SETTLE_POLLS` polls: every message it held has run."""
        deadline, polls, last = clock() + 60, 0, None
        while polls < SETTLE_POLLS:
            if clock() > deadline:
                raise TimeoutError("the worker did not settle within 60 s")
            now = snapshot() if self.idle() else None
            polls = polls + 1 if now is not None and now == last else 0
            last = now
            time.sleep(SETTLE_EVERY)


class Ledger:
    """What a worker row checks after its drain: each counter of bench/counting.py moved by
    what was expected of it (the others not at all), and no dead letter was written."""

    def __init__(self, counts: redis.Redis, dead_letters: DeadLetters) -> None:
        self.counts = counts
        self.dead_letters = dead_letters

    def snapshot(self) -> tuple[dict[str, int], int]:
        values = self.counts.mget([key(name) for name in COUNTERS])
        counts = {name: int(value or 0) for name, value in zip(COUNTERS, values, strict=True)}
        return counts, len(self.dead_letters)

    def counted(
        self, before: tuple[dict[str, int], int], expected: Mapping[str, int]
    ) -> Callable[[], bool]:
        """Whether each counter has moved by at least what ``expected`` says, since ``before``."""

        def counted() -> bool:
            counts, _ = self.snapshot()
            return all(counts[name] - before[0][name] >= n for name, n in expected.items())

        return counted

    def failure(
        self, before: tuple[dict[str, int], int], expected: Mapping[str, int]
    ) -> str | None:
        """What went other than ``expected`` (counter: events) since ``before``, or None."""
        (counts_before, letters_before), (counts, letters) = before, self.snapshot()
        problems = [
            f"{name} got {counts[name] - counts_before[name]:,} of {expected.get(name, 0):,}"
            for name in COUNTERS
            if counts[name] - counts_before[name] != expected.get(name, 0)
        ]
        if letters != letters_before:
            problems.append(f"{letters - letters_before:,} dead letters")
        return "; ".join(problems) or None


class RawCeleryWorker(Process):
    """``celery -A bench.raw_celery worker -Q bench.raw``, with the concurrency and log level
    that ``like`` (notifier's bench worker) was started with, read from its command line."""

    def __init__(self, directory: Path, env: Mapping[str, str], like: CeleryWorker) -> None:
        command = psutil.Process(like.pid).cmdline()
        self.log_level = command[command.index("-l") + 1]
        self.concurrency = int(command[command.index("-c") + 1])
        argv = [
            sys.executable, "-m", "celery", "-A", "bench.raw_celery", "worker",
            "-l", self.log_level, "-c", str(self.concurrency), "-Q", RAW_QUEUE,
            "-n", f"bench-raw-worker-{os.getpid()}@%h", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        name = "bench-raw-worker"
        super().__init__(name, argv, directory / f"{name}.log", {**os.environ, **env})
        self.wait_until_ready(self.ready, 60, f"{name} ready")

    def ready(self) -> bool:
        self.check_alive()
        return " ready." in self.output()


class Limit:
    """The physical limit: ``processes`` bare loops (bench/limit.py) popping one queue, started
    for each round before it is filled. A round returns its seconds, from the move to the last
    message handled, and how many messages the loops handled."""

    def __init__(self, drain: Drain, directory: Path, counts_url: str, processes: int) -> None:
        self.drain = drain
        self.directory = directory
        self.counts_url = counts_url
        self.reports = redis.Redis.from_url(counts_url)
        self.processes = processes

    def run(self, fill: Callable[[], None], queue: str, batch: int) -> tuple[float, int]:
        self.reports.delete(READY_KEY, REPORTS_KEY)
        argv = [
            sys.executable, "-m", "bench.limit", self.drain.worker_url, self.counts_url, queue,
            str(batch),
        ]  # fmt: skip
        loops = [
            Process(f"bench-limit-{n}", argv, self.directory / f"bench-limit-{n}.log", os.environ)
            for n in range(self.processes)
        ]
        try:
            wait_until(
                lambda: int(self.reports.get(READY_KEY) or 0) == self.processes, 30, "loops ready"
            )
            started = self.drain.fill_and_move(fill, queue)
            wait_until(lambda: self.reports.llen(REPORTS_KEY) == self.processes, 300, "loops done")
        finally:
            for loop in loops:
                loop.stop()
        reports = [json.loads(raw) for raw in self.reports.lrange(REPORTS_KEY, 0, -1)]
        finished = max(report["finished"] or started for report in reports)
        return finished - started, sum(report["handled"] for report in reports)
