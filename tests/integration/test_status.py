"""notifier status against a real worker on a redis-server of the test's own: it sees the
worker, the listeners it announced and the queues it takes, and says the pipeline is healthy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis

from examples.processes import wait_until
from tasks.fleet import FLEET_KEY
from tests.support.processes import CeleryWorker, RedisServer

ROOT = Path(__file__).resolve().parents[2]
LISTENER = "tests.integration.listeners.record_articles"


def status(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``notifier status`` (the console script) as an operator would, with ``env``."""
    environ = {**os.environ, **env}
    environ.pop("NOTIFIER_SPOOL_DIR", None)
    return subprocess.run(
        [str(Path(sys.executable).parent / "notifier"), "status", *argv],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_sees_a_live_worker_and_its_listeners(broker: RedisServer, tmp_path: Path) -> None:
    env = {"CELERY_BROKER_URL": broker.url, "NOTIFIER_LISTENERS": "tests.integration.listeners"}
    worker = CeleryWorker(tmp_path, env, concurrency=1, name="status")
    try:
        client = redis.Redis.from_url(broker.url)
        wait_until(lambda: client.hlen(FLEET_KEY) == 1, 30, "the worker announced to the fleet")

        completed = status({"CELERY_BROKER_URL": broker.url}, "--json")

        assert completed.returncode == 0, completed.stdout + completed.stderr
        shown = json.loads(completed.stdout)
        [seen] = shown["workers"]
        assert seen["hostname"].startswith(f"status-{os.getpid()}@")
        assert seen["answered"] is True
        assert LISTENER in seen["listeners"]
        queues = {queue["name"]: queue for queue in shown["queues"]}
        assert queues["notifier"]["consumers"] == [seen["hostname"]]
        assert shown["healthy"] is True
        assert shown["problems"] == []
        assert f"the broker at {broker.url} (CELERY_BROKER_URL)" in completed.stderr
    finally:
        worker.stop()

    # The worker gone, nobody answers: a person is needed.
    completed = status({"CELERY_BROKER_URL": broker.url}, "--json")

    assert completed.returncode == 1
    assert "no worker answered the ping" in json.loads(completed.stdout)["problems"]
