"""What a worker counts: the messages dispatch handles and each listener's runs.

Each pool process counts its own, in memory it shares with the worker's main process when the
worker serves its metrics (prometheus-client's multiprocess mode: one mmap'ed file per process,
:mod:`tasks.metrics.endpoint`): an increment is a write to that memory, with no lock shared
between processes and no call to Redis.

The runs are seen through Celery's signals (:mod:`tasks.dispatch.signals`), which Celery's
tracer sends for every run of a listener's task, whether it ran in dispatch or as its own task.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from tasks.listeners.registry import Registry

__all__ = ["LAG_BUCKETS", "OUTCOMES", "RUN_BUCKETS", "WorkerMetrics"]

#: How a listener's run (or its message) ended: ran, will run again, kept as a dead letter, or
#: failed for good and could not even be kept (the dead letters out of reach: logged whole).
OUTCOMES = ("success", "retry", "dead_letter", "failure")
#: The run times a listener's histogram tells apart, in seconds.
RUN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The lags from commit to a listener's run that its histogram tells apart, in seconds.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class WorkerMetrics:
    """The worker's counters and histograms (names and labels: docs/metrics.md).

    ``registry``: where they are registered; None (a worker's): nowhere, since the endpoint
    reads every process's files instead.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.events_received = Counter(
            "notifier_events_received",
            "Messages dispatch handled, by the queue they came from.",
            ["queue"],
            registry=registry,
        )
        self.listener_runs = Counter(
            "notifier_listener_runs",
            "How each listener's runs ended: success, retry, dead_letter or failure.",
            ["listener", "outcome"],
            registry=registry,
        )
        self.run_seconds = Histogram(
            "notifier_listener_run_seconds",
            "How long each run of a listener took, in seconds.",
            ["listener"],
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.lag_seconds = Histogram(
            "notifier_listener_lag_seconds",
            "From the commit of a change to the start of a listener's first run on it, seconds.",
            ["listener"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._started: dict[str, tuple[str, float]] = {}  # task id -> (listener, perf_counter)

    def listener_of(self, registry: Registry, task_name: str | None) -> str | None:
        """The name of ``registry``'s listener whose task is ``task_name``, if any."""
        listeners = registry.of_task(task_name)
        return listeners[0].name if listeners else None

    def received(self, queue: str | None) -> None:
        """Count a message dispatch handles."""
        self.events_received.labels(queue or "").inc()

    def run_started(self, listener: str, task_id: str, message: Any, retries: int) -> None:
        """A run of ``listener`` on ``message`` (one, or a batch's list) starts; its first
        attempt (``retries`` 0) observes the lag from each message's commit."""
        self._started[task_id] = (listener, time.perf_counter())
        if retries:
            return
        now = time.time()
        for data in message if isinstance(message, list) else (message,):
            committed_at = data.get("committed_at") if isinstance(data, dict) else None
            if isinstance(committed_at, int | float) and not isinstance(committed_at, bool):
                self.lag_seconds.labels(listener).observe(max(0.0, now - committed_at))

    def run_ended(self, task_id: str) -> None:
        """The run of ``task_id`` ended, whichever way: observe how long it took."""
        started = self._started.pop(task_id, None)
        if started is not None:
            listener, at = started
            self.run_seconds.labels(listener).observe(time.perf_counter() - at)

    def outcome(self, listener: str, outcome: str) -> None:
        """Count how a run of ``listener`` ended (one of :data:`OUTCOMES`)."""
        self.listener_runs.labels(listener, outcome).inc()
