"""The worker's metrics endpoint: an HTTP server in its main process, for Prometheus to scrape.

With ``NOTIFIER_METRICS_PORT`` set, a worker serves ``/metrics`` on that port from its main
process. Its pool processes count in prometheus-client's multiprocess mode: each writes its
counts to a file of its own in ``PROMETHEUS_MULTIPROC_DIR`` (a private temporary directory,
made before the pool forks and removed when the worker stops, unless the operator set one), and
a scrape sums them. What is read at scrape time rather than counted, in the main process: the
dead letters held, by listener (the dead-letter store), and the depth of each queue the worker
consumes (the broker, asked as any AMQP client asks: a passive ``queue_declare``).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from prometheus_client import CollectorRegistry, start_http_server, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from notifier.errors import ConfigurationError
from tasks.dead_letters import DeadLetters

__all__ = ["MULTIPROC_DIR", "StoreCollector", "mark_dead", "serve", "use_multiprocess_dir"]

logger = logging.getLogger("notifier")

#: The environment variable of prometheus-client's multiprocess mode.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def use_multiprocess_dir(environ: dict[str, str] | Any = os.environ) -> Path:
    """Count in prometheus-client's multiprocess mode, in ``$PROMETHEUS_MULTIPROC_DIR`` or, when
    it is unset, in a private temporary directory made now (and removed when this process
    exits); before the pool forks. Raise :class:`ConfigurationError` for a directory that is
    not one this process can write in."""
    given = environ.get(MULTIPROC_DIR)
    if given:
        directory = Path(given)
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigurationError(
                MULTIPROC_DIR, given, "a directory the worker can write in (or unset)"
            )
    else:
        directory = Path(tempfile.mkdtemp(prefix="notifier-metrics-"))
        environ[MULTIPROC_DIR] = str(directory)
        atexit.register(_remove, directory, os.getpid())
    # prometheus-client chooses how every metric keeps its values once, when it is imported
    # (values.ValueClass, read as each metric's value is made: 0.17 to 0.26 checked); it may
    # have been imported before the directory was set.
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return directory


def _remove(directory: Path, owner: int) -> None:
    # Only the process that made it removes it: pool processes exit through atexit too.
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)


def mark_dead(pid: int) -> None:
    """Let go of the files of the pool process ``pid``, which exited (its counts stay)."""
    mark_process_dead(pid)  # type: ignore[no-untyped-call]


class StoreCollector:
    """The gauges read at scrape time: the dead letters held, by listener
    (``notifier_dead_letters``), and each of ``queues()``'s depth (``notifier_queue_depth``).
    A store out of reach leaves its gauge out of that scrape, with a WARNING."""

    def __init__(
        self, dead_letters: DeadLetters, queues: Callable[[], Iterable[str]], app: Celery
    ) -> None:
        self.dead_letters = dead_letters
        self.queues = queues
        self.app = app
        self._lock = threading.Lock()  # one scrape at a time asks Redis

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            held = self._dead_letters()
            depths = self._depths()
        if held is not None:
            gauge = GaugeMetricFamily(
                "notifier_dead_letters",
                "Dead letters held, by the listener that failed for good ('' for none).",
                labels=["listener"],
            )
            for listener, count in sorted(held.items()):
                gauge.add_metric([listener], count)
            yield gauge
        if depths is not None:
            gauge = GaugeMetricFamily(
                "notifier_queue_depth",
                "Messages waiting in each queue this worker consumes.",
                labels=["queue"],
            )
            for queue, depth in sorted(depths.items()):
                gauge.add_metric([queue], depth)
            yield gauge

    def _dead_letters(self) -> dict[str, int] | None:
        try:
            return dict(collections.Counter(letter.listener or "" for letter in self.dead_letters))
        except (redis.RedisError, OSError) as exc:
            logger.warning("metrics: could not read the dead letters: %s", exc)
            return None

    def _depths(self) -> dict[str, int] | None:
        depths = {}
        try:
            with self.app.connection_for_read() as connection:
                for queue in self.queues():
                    depths[queue] = _depth(connection, queue)
        except Exception as exc:  # whatever the transport raises: the scrape still answers
            logger.warning("metrics: could not read the queues' depths: %s", exc)
            return None
        return depths


def _depth(connection: Any, queue: str) -> int:
    # A passive declare, on a channel of its own: a queue that does not exist (on Redis: an
    # empty one, whose list is gone) closes the channel it was asked on.
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except connection.channel_errors:
        return 0
    finally:
        channel.close()


def serve(port: int, collector: StoreCollector, address: str = "0.0.0.0") -> CollectorRegistry:
    """Serve the metrics of every process of this worker (and ``collector``'s) over HTTP on
    ``port``, from a thread of this process; return the registry it serves."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(collector)
    start_http_server(port, addr=address, registry=registry)
    return registry
