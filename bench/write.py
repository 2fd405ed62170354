"""1. The write path: a POST to the example app with no listener, with kinto-redis's synchronous
RPUSH, and with notifier, interleaved; then the same writes while Redis is hung (SIGSTOP)."""

from __future__ import annotations

import json
import signal
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webob import Request

from bench.measure import RECORD, Row, ms, percentile, timed, us
from tests.support.processes import RedisServer


def write_apps(redis_url: str, directory: Path) -> dict[str, Any]:
    from examples.articles import make_app

    def app(name: str, notifier_settings: dict[str, str]) -> Any:
        return make_app(
            {
                # In memory: a file's fsync on each commit would drown the differences measured.
                "sqlalchemy.url": "sqlite://",
                "search.index": str(directory / "search-index.sqlite3"),
                **notifier_settings,
            }
        )

    return {
        "no listener": app("none", {"notifier.resources": "nothing_listens"}),
        "sync RPUSH (kinto-redis)": app(
            "redis",
            {
                "notifier.event_listeners": "redis",
                "notifier.event_listeners.redis.use": "notifier.listeners.redis",
                "notifier.event_listeners.redis.url": redis_url,
            },
        ),
        "notifier": app(
            "notifier",
            {"notifier.broker_url": redis_url, "notifier.spool_dir": str(directory / "spool")},
        ),
    }


def post_article(app: Any) -> Callable[[], None]:
    body = json.dumps({"title": RECORD["title"], "body": RECORD["body"]}).encode()

    def post() -> None:
        request = Request.blank("/articles", method="POST", body=body)
        request.content_type = "application/json"
        response = request.get_response(app)
        assert response.status_int == 201, response.text

    return post


def bench_write_path(server: RedisServer, directory: Path, rounds: int, requests: int) -> list[Row]:
    apps = write_apps(server.url, directory)
    posts = {name: post_article(app) for name, app in apps.items()}
    latencies: dict[str, list[float]] = {name: [] for name in apps}
    for post in posts.values():
        timed(post, 50)  # warm up: connections, SQLite, code paths
    for _ in range(rounds):
        for name, post in posts.items():  # interleaved, so that drift hits all alike
            latencies[name] += timed(post, requests)
    base = statistics.median(latencies["no listener"])
    added = {name: statistics.median(values) - base for name, values in latencies.items()}
    rows: list[Row] = []
    for name, values in latencies.items():
        ratio = "" if name == "no listener" else f"+{us(added[name])}"
        if name == "notifier":
            ratio += f" = {added[name] / added['sync RPUSH (kinto-redis)']:.2f}x RPUSH's"
        rows.append(
            (
                f"1. write: POST, {name}",
                ms(statistics.median(values)),
                ms(percentile(values, 0.99)),
                ratio,
            )
        )
    # Redis hung (SIGSTOP): every write still ends, within publish_timeout (0.5 s).
    hung: dict[str, list[float]] = {}
    server.signal(signal.SIGSTOP)
    try:
        for name in ("sync RPUSH (kinto-redis)", "notifier"):
            hung[name] = timed(posts[name], 20)
    finally:
        server.signal(signal.SIGCONT)
    for name, values in hung.items():
        rows.append(
            (
                f"1. write: POST, {name}, Redis hung",
                ms(statistics.median(values)),
                ms(max(values)),
                "p99 = slowest of 20",
            )
        )
    return rows
