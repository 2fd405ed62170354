"""Docs' picture of Flower watching the demo: ``docs/_static/flower.png`` (docs/watching.md).

Starts a redis-server of its own, a worker with task events on (``-E``), the example app and
Flower, writes articles over HTTP (creates, updates, deletes) so that Flower's task list shows
``notifier.dispatch`` tasks and their listeners' tasks (``<event_id>:notifier.search_index``),
waits until Flower's API lists them, takes the picture of Flower's task list with headless
Chromium, and stops every process it started. ``--output PATH`` writes the picture elsewhere;
``--chromium`` names the browser (default: ``chromium`` on the PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from examples.demo import call
from examples.processes import CeleryWorker, Process, RedisServer, WebApp, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTICLES = 30
# A picture of an empty page or of a bare table is a few KB; Flower's table with its rows, more.
SMALLEST_PICTURE = 20_000


class Flower(Process):
    """``celery -A tasks flower``, ready once its HTTP answers and the worker's heartbeat came."""

    def __init__(self, directory: Path, env: Mapping[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable, "-m", "celery", "-A", "tasks", "flower",
            f"--port={self.port}", "--address=127.0.0.1",
        ]  # fmt: skip
        # Flower answers its /api/ without authentication only when told to: the script reads
        # /api/tasks to know when the picture is worth taking.
        environ = {**env, "FLOWER_UNAUTHENTICATED_API": "true"}
        super().__init__("flower", argv, directory / "flower.log", environ)
        self.wait_until_ready(self.answers, 60, f"flower answering on port {self.port}")
        # Flower sees only the events sent once it listens: wait for a heartbeat (every 2 s),
        # so that the first articles' tasks are in its list too.
        self.wait_until_ready(self.sees_a_worker, 30, "flower seeing the worker")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.load(response)

    def answers(self) -> bool:
        self.check_alive()
        try:
            self.get("/api/tasks?limit=1")
        except OSError:
            return False
        return True

    def sees_a_worker(self) -> bool:
        self.check_alive()
        return bool(self.get("/workers?json=1")["data"])

    def tasks(self) -> list[dict[str, Any]]:
        return list(self.get("/api/tasks").values())


def write_articles(url: str, count: int) -> int:
    """Create ``count`` articles, update every third and delete every fifth; return how many
    writes that made (one event each)."""
    writes = 0
    for number in range(1, count + 1):
        article = call(
            "POST",
            f"{url}/articles",
            {"title": f"Article {number} about workers", "body": f"Queues and listeners {number}"},
            show=False,
        )
        writes += 1
        if number % 3 == 0:
            call(
                "PATCH",
                f"{url}/articles/{article['data']['id']}",
                {"body": f"Queues, listeners and celery workers {number}"},
                show=False,
            )
            writes += 1
        if number % 5 == 0:
            call("DELETE", f"{url}/articles/{article['data']['id']}", show=False)
            writes += 1
    return writes


def take_picture(chromium: str, url: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    # --virtual-time-budget: Chromium waits for the page's scripts, which fetch the table's rows
    # (/tasks/datatable), before it takes the picture; 1600 px wide, Flower's six columns fit.
    argv = [
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--window-size=1600,900", "--virtual-time-budget=8000", f"--screenshot={output}", url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{chromium} exited with {done.returncode}:\n{done.stderr}")
    size = output.stat().st_size if output.exists() else 0
    if size < SMALLEST_PICTURE:
        raise RuntimeError(f"{output}: {size} bytes, smaller than a picture of Flower's tasks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "_static" / "flower.png")
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args(argv)
    chromium = shutil.which(args.chromium)
    if chromium is None:
        print(f"no {args.chromium} on the PATH: install Chromium", file=sys.stderr)
        return 1

    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="notifier-")))
        server = RedisServer(directory)
        stack.callback(server.stop)
        print(f"broker: started redis-server (pid {server.pid}) at {server.url}")
        env = {
            # As in the demo: nothing goes to a Redis named elsewhere in the shell.
            "CELERY_BROKER_URL": server.url,
            "NOTIFIER_DEAD_LETTERS_URL": server.url,
            "NOTIFIER_ORDER_URL": server.url,
            "NOTIFIER_SEARCH_INDEX": str(directory / "search-index.sqlite3"),
            "NOTIFIER_SEARCH_RESOURCES": "article",
        }
        worker = CeleryWorker(directory, env, options=["-E"])
        stack.callback(worker.stop)
        print(f"worker: celery -A tasks worker -E (pid {worker.pid}) ready")
        web = WebApp(directory, env)
        stack.callback(web.stop)
        print(f"web:    example app (pid {web.pid}) at {web.url}")
        flower = Flower(directory, {**os.environ, **env})
        stack.callback(flower.stop)
        print(f"flower: celery -A tasks flower (pid {flower.pid}) at {flower.url}")

        started = time.monotonic()
        events = write_articles(web.url, ARTICLES)
        print(f"wrote {ARTICLES} articles over HTTP: {events} events")

        def listed() -> tuple[int, int]:
            tasks = flower.tasks()
            dispatch = sum(task["name"] == "notifier.dispatch" for task in tasks)
            return dispatch, sum(task["name"] not in (None, "notifier.dispatch") for task in tasks)

        print("waiting for Flower to list the dispatch and listener tasks...")
        wait_until(lambda: min(listed()) >= events, 60, "flower listing the tasks of every event")
        dispatch, listeners = listed()
        print(f"done in {time.monotonic() - started:.2f} s: {dispatch} dispatch tasks,", end=" ")
        print(f"{listeners} listener tasks")

        take_picture(chromium, f"{flower.url}/tasks", args.output)
        print(f"picture: {args.output} ({args.output.stat().st_size} bytes)")
        print("stopping the processes the script started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
