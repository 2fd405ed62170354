"""Broker outages during writes: every write succeeds within the bound, no committed event is lost.

Each test has a redis-server of its own, which it stops or hangs (SIGSTOP) while the example
app takes 1 000 writes, then brings back; the events wait in the web process's spool meanwhile,
or in its outbox (each test runs with both).
"""

from __future__ import annotations

import json
import signal
import statistics
import time
import urllib.request
from collections.abc import Callable

import pytest
import redis

from tests.integration.received import Received
from tests.support.processes import CeleryWorker, RedisServer, WebApp, wait_until

WRITES = 1000
BOUND = 1.5  # seconds: the publish timeout (0.5 s) and room for a loaded machine


def post(url: str, title: str) -> tuple[int, float]:
    request = urllib.request.Request(
        f"{url}/articles",
        data=json.dumps({"title": title}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, time.monotonic() - started


@pytest.fixture(params=["spool", "outbox"])
def backlog(request: pytest.FixtureRequest) -> str:
    """Where the example app keeps what the broker did not take."""
    return str(request.param)


def write_during_an_outage(
    tmp_path,
    start_outage: Callable[[RedisServer], Callable[[RedisServer], RedisServer]],
    name: str,
    backlog: str,
) -> None:
    (tmp_path / "redis-before").mkdir()
    broker = RedisServer(tmp_path / "redis-before")
    env = {
        "CELERY_BROKER_URL": broker.url,
        "NOTIFIER_LISTENERS": "tests.integration.listeners",
        "NOTIFIER_OUTBOX": "true" if backlog == "outbox" else "false",
    }
    worker = CeleryWorker(tmp_path, env, name=f"{name}-worker")
    web = WebApp(tmp_path, env, name=f"{name}-web")
    try:
        end_outage = start_outage(broker)
        titles = [f"{name} {n}" for n in range(WRITES)]
        answers = [post(web.url, title) for title in titles]
        broker = end_outage(broker)

        statuses = {status for status, _ in answers}
        latencies = sorted(latency for _, latency in answers)
        print(
            f"{name}, {backlog}: {WRITES} writes, "
            f"median {statistics.median(latencies) * 1000:.1f} ms, "
            f"max {latencies[-1] * 1000:.1f} ms"
        )
        assert statuses == {201}
        assert latencies[-1] < BOUND

        received = Received(redis.Redis.from_url(broker.url, decode_responses=True))

        def delivered() -> set[str]:
            return {
                change["new"]["title"]
                for event in received.by("record_articles")
                for change in event["impacted_records"]
            }

        wait_until(lambda: delivered() >= set(titles), 120, f"the {WRITES} events delivered")
        assert delivered() == set(titles)
    finally:
        web.stop()
        worker.stop()
        broker.stop()


def test_redis_stopped_during_1000_writes_loses_no_committed_event(tmp_path, backlog):
    def stop(broker: RedisServer) -> Callable[[RedisServer], RedisServer]:
        broker.stop()

        def restart(stopped: RedisServer) -> RedisServer:
            (tmp_path / "redis-after").mkdir()
            return RedisServer(tmp_path / "redis-after", port=stopped.port)

        return restart

    write_during_an_outage(tmp_path, stop, "stopped", backlog)


def test_redis_hung_during_1000_writes_loses_no_committed_event(tmp_path, backlog):
    def hang(broker: RedisServer) -> Callable[[RedisServer], RedisServer]:
        broker.signal(signal.SIGSTOP)

        def resume(hung: RedisServer) -> RedisServer:
            hung.signal(signal.SIGCONT)
            return hung

        return resume

    write_during_an_outage(tmp_path, hang, "hung", backlog)
