"""A real prefork worker's metrics endpoint: what its pool processes counted, summed, over HTTP."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tests.support.processes import CeleryWorker, RedisServer, free_port, wait_until

EVENTS = 20


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "metrics"
    directory.mkdir()
    return directory


@pytest.fixture
def metrics_worker(
    broker: RedisServer, tmp_path: Path, metrics_dir: Path
) -> Iterator[tuple[CeleryWorker, int]]:
    """A prefork worker of two pool processes serving its metrics, their files in
    ``metrics_dir``."""
    port = free_port()
    process = CeleryWorker(
        tmp_path,
        {
            "CELERY_BROKER_URL": broker.url,
            "NOTIFIER_LISTENERS": "tests.integration.metrics_listeners",
            "NOTIFIER_METRICS_PORT": str(port),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        },
        concurrency=2,
        name="metrics-worker",
    )
    yield process, port
    process.stop()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def publish(broker: RedisServer, count: int) -> None:
    publisher = CeleryPublisher(broker.url, 5)
    try:
        for n in range(count):
            message = encode(
                {"resource_name": "gauge", "action": "create", "uri": f"/gauges/{n}"},
                [{"new": {"id": str(n)}}],
                [0],
                request_id=f"req-{n}",
                committed_at=time.time(),
            )
            publisher.publish(message, "notifier")
    finally:
        publisher.close()


def test_a_prefork_worker_serves_the_counts_of_all_its_pool_processes(
    broker: RedisServer,
    metrics_worker: tuple[CeleryWorker, int],
    metrics_dir: Path,
) -> None:
    _, port = metrics_worker
    publish(broker, EVENTS)

    def all_counted() -> bool:
        samples = scrape(port)
        return (
            value(
                samples, "notifier_listener_runs_total", listener="metrics.fine", outcome="success"
            )
            == EVENTS
            and value(
                samples,
                "notifier_listener_runs_total",
                listener="metrics.broken",
                outcome="dead_letter",
            )
            == EVENTS
        )

    wait_until(all_counted, 60, f"{EVENTS} runs of each listener counted")
    samples = scrape(port)

    assert value(samples, "notifier_events_received_total", queue="notifier") == EVENTS
    assert value(samples, "notifier_listener_run_seconds_count", listener="metrics.fine") == EVENTS
    assert value(samples, "notifier_listener_lag_seconds_count", listener="metrics.fine") == EVENTS
    assert (
        value(samples, "notifier_listener_runs_total", listener="metrics.broken", outcome="retry")
        is None
    )
    assert value(samples, "notifier_dead_letters", listener="metrics.broken") == EVENTS
    assert value(samples, "notifier_queue_depth", queue="notifier") == 0
    # Both pool processes counted (the main process runs no listener): the sums are of both.
    assert len(list(metrics_dir.glob("counter_*.db"))) >= 2
