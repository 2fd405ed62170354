"""A seeded convergence run: do random writes through the example app's HTTP API while workers
deliver the events out of order, then check that the listeners' copies equal the database.

The writes: article creates (with ids, so that deleted ones come back), updates (PUT, PATCH),
deletes, blog creates and blog deletes (which drop their articles without an article event), and
``/batch`` writes that delete an article, re-create it and delete or change it again. Meanwhile
several workers (two processes each) run the built-in search index and an ordered mirror
listener (tests/integration/convergence_listeners.py), some deliveries are handed back to the
broker (redeliveries, duplicates included), and workers are killed (SIGKILL) mid-run and
replaced. At the end, both copies must hold every article of the database, as the database
holds it, and nothing else.

The short run is a test (test_convergence.py); the soak run is ``scripts/soak``::

    python -m tests.integration.convergence --operations 20000 --kills 5 --seed 7
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.processes import CeleryWorker, RedisServer, WebApp

BLOGS = [f"blog{n}" for n in range(4)]
WORDS = ["redis", "celery", "pyramid", "kinto", "broker", "queue", "worker", "index", "order"]
MIRROR = "convergence:mirror"  # the ordered listener's copy: "<blog_id>/<id>" -> article JSON
REDELIVERED = "convergence:redelivered"  # the task ids handed back to the broker once (a set)

Copy = dict[tuple[str, str], dict[str, Any]]  # (blog_id or "", article id) -> article


@dataclass
class Report:
    """What a run did, and how far the copies are from the database."""

    seed: int
    operations: int = 0  # HTTP writes, a batch counting once
    changes: int = 0  # the writes and every write inside a batch
    refused: int = 0  # answered >= 400 (a missing article, a rolled-back batch...)
    workers_killed: int = 0
    redeliveries: int = 0
    dead_letters: int = 0
    articles: int = 0
    diverged: dict[str, list[str]] = field(default_factory=dict)  # copy -> differing articles
    seconds: float = 0.0

    @property
    def objects_diverged(self) -> int:
        return sum(len(keys) for keys in self.diverged.values())

    def lines(self) -> Iterator[str]:
        yield f"seed {self.seed}: {self.operations} operations, {self.changes} changes"
        yield f"refused (404, 409, rolled-back batches): {self.refused}"
        yield f"workers killed: {self.workers_killed}"
        yield f"redeliveries injected: {self.redeliveries}"
        yield f"dead letters: {self.dead_letters}"
        yield f"articles in the database: {self.articles}"
        for copy, keys in self.diverged.items():
            yield f"objects diverged in the {copy}: {len(keys)} {sorted(keys)[:10]}"
        yield f"objects diverged: {self.objects_diverged} ({self.seconds:.1f} s)"


class Client:
    """The example app's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def send(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


class Writer:
    """Random writes, from a seed. It guesses which articles exist; the database decides."""

    def __init__(self, seed: int, client: Client, report: Report) -> None:
        self.random = random.Random(seed)
        self.client = client
        self.report = report
        self.known: set[tuple[str, str]] = set()  # (blog_id or "", id) of existing articles
        self.blogs: set[str] = set()

    def _learn(self, request: dict[str, Any]) -> None:
        # What a write that succeeded changed: the next writes mostly aim at what exists.
        parts = request["path"].strip("/").split("/")
        if parts[0] == "blogs" and len(parts) == 2:
            if request["method"] == "DELETE":
                self.blogs.discard(parts[1])
                self.known = {key for key in self.known if key[0] != parts[1]}
            else:
                self.blogs.add(parts[1])
            return
        blog_id = parts[1] if parts[0] == "blogs" else ""
        if request["method"] == "POST":
            self.known.add((blog_id, request["body"]["id"]))
        elif request["method"] == "DELETE":
            self.known.discard((blog_id, parts[-1]))

    def _path(self, blog_id: str, article_id: str | None = None) -> str:
        base = f"/blogs/{blog_id}/articles" if blog_id else "/articles"
        return base if article_id is None else f"{base}/{article_id}"

    def _article(self) -> dict[str, str]:
        words = self.random.sample(WORDS, 3)
        return {"title": " ".join(words[:2]), "body": words[2]}

    def _some_article(self) -> tuple[str, str]:
        if self.known and self.random.random() < 0.9:
            return self.random.choice(sorted(self.known))
        return self._new_article()

    def _new_article(self) -> tuple[str, str]:
        # Ids from a small set, so that deleted articles come back.
        blog_id = self.random.choice(["", *sorted(self.blogs)])
        return blog_id, f"a{self.random.randrange(150)}"

    def _create(self) -> dict[str, Any]:
        blog_id, article_id = self._new_article()
        body = {**self._article(), "id": article_id}
        return {"method": "POST", "path": self._path(blog_id), "body": body}

    def _update(self) -> dict[str, Any]:
        blog_id, article_id = self._some_article()
        method = self.random.choice(["PUT", "PATCH"])
        body = self._article() if method == "PUT" else {"body": self.random.choice(WORDS)}
        return {"method": method, "path": self._path(blog_id, article_id), "body": body}

    def _delete(self) -> dict[str, Any]:
        blog_id, article_id = self._some_article()
        return {"method": "DELETE", "path": self._path(blog_id, article_id)}

    def _recreation(self) -> list[dict[str, Any]]:
        # Kinto delivers [delete x, create x, delete x] as delete, delete, create.
        blog_id, article_id = self._some_article()
        path = self._path(blog_id, article_id)
        steps = [
            {"method": "DELETE", "path": path},
            {
                "method": "POST",
                "path": self._path(blog_id),
                "body": {**self._article(), "id": article_id},
            },
        ]
        ending = self.random.choice(["delete", "update", "none"])
        if ending == "delete":
            steps.append({"method": "DELETE", "path": path})
        elif ending == "update":
            steps.append({"method": "PATCH", "path": path, "body": {"title": "again"}})
        return steps

    def _blog_cycle(self) -> list[dict[str, Any]]:
        # Delete a blog, re-create it, write into it: the delete must not take the new ones.
        blog_id = self.random.choice(BLOGS)
        steps = [
            {"method": "DELETE", "path": f"/blogs/{blog_id}"},
            {"method": "PUT", "path": f"/blogs/{blog_id}", "body": {"title": blog_id}},
        ]
        for _ in range(self.random.randrange(1, 4)):
            article_id = f"a{self.random.randrange(150)}"
            body = {**self._article(), "id": article_id}
            steps.append({"method": "POST", "path": self._path(blog_id), "body": body})
        if self.random.random() < 0.3:
            steps.append({"method": "DELETE", "path": f"/blogs/{blog_id}"})
        return steps

    def _send(self, request: dict[str, Any]) -> None:
        status, _ = self.client.send(request["method"], request["path"], request.get("body"))
        self.report.operations += 1
        self.report.changes += 1
        self.report.refused += status >= 400
        if status < 400:
            self._learn(request)

    def _send_batch(self, requests: list[dict[str, Any]]) -> None:
        status, _ = self.client.send("POST", "/batch", {"requests": requests})
        self.report.operations += 1
        self.report.changes += len(requests)
        self.report.refused += status >= 400
        if status < 400:
            for request in requests:
                self._learn(request)

    def step(self) -> None:
        roll = self.random.random()
        if roll < 0.32:
            self._send(self._create())
        elif roll < 0.55:
            self._send(self._update())
        elif roll < 0.67:
            self._send(self._delete())
        elif roll < 0.90:
            requests = self._recreation()
            for _ in range(self.random.randrange(0, 4)):
                requests.append(self.random.choice([self._create, self._update, self._delete])())
            self._send_batch(requests)
        elif roll < 0.92:
            # The same, one request at a time and in one batch: the deletes of a blog, merged
            # into one event, and the writes between them.
            cycle = self._blog_cycle()
            if self.random.random() < 0.5 and self.blogs.issuperset([cycle[0]["path"][7:]]):
                self._send_batch(cycle)
            else:
                for request in cycle:
                    self._send(request)
        elif roll < 0.99 or not self.blogs:
            blog_id = self.random.choice(BLOGS)
            self._send({"method": "PUT", "path": f"/blogs/{blog_id}", "body": {"title": blog_id}})
        else:
            blog_id = self.random.choice(sorted(self.blogs))
            self._send({"method": "DELETE", "path": f"/blogs/{blog_id}"})


def database_articles(path: Path) -> Copy:
    with closing(sqlite3.connect(path, timeout=30)) as connection:
        rows = connection.execute("SELECT blog_id, id, title, body, last_modified FROM articles")
        return {
            (blog_id or "", id_): {
                "id": id_, "title": title, "body": body, "last_modified": last_modified,
            }
            for blog_id, id_, title, body, last_modified in rows
        }  # fmt: skip


def index_articles(path: Path) -> Copy:
    if not path.exists():
        return {}
    with closing(sqlite3.connect(path, timeout=30)) as connection:
        rows = connection.execute(
            "SELECT parent, record FROM records WHERE resource_name = 'article' AND NOT deleted"
        )
        copy = {}
        for parent, record in rows:
            article = json.loads(record)
            copy[(json.loads(parent).get("blog_id", ""), article["id"])] = article
        return copy


def mirror_articles(client: redis.Redis) -> Copy:
    copy = {}
    for key, value in client.hgetall(MIRROR).items():
        blog_id, _, article_id = key.decode().partition("/")
        copy[(blog_id, article_id)] = json.loads(value)
    return copy


def differences(database: Copy, copy: Copy) -> list[str]:
    keys = database.keys() | copy.keys()
    return sorted(f"{b or '-'}/{a}" for b, a in keys if database.get((b, a)) != copy.get((b, a)))


def quiet(client: redis.Redis) -> bool:
    """Whether the broker holds nothing to deliver: every queue empty, no message taken and
    unacknowledged (retries and deferred runs wait there, for their countdown)."""
    queues = [key for key in client.scan_iter("notifier*") if client.type(key) == b"list"]
    return client.hlen("unacked") == 0 and all(client.llen(key) == 0 for key in queues)


def run(
    directory: Path,
    *,
    seed: int,
    operations: int,
    workers: int = 2,
    kills: int = 1,
    redeliver: float = 0.05,
    settle: float = 120.0,
    say: Callable[[str], None] = lambda line: None,
) -> Report:
    """Do ``operations`` random writes with ``workers`` workers, killing and replacing one
    ``kills`` times along the way, then wait up to ``settle`` seconds for the copies to equal
    the database."""
    report = Report(seed)
    started = time.monotonic()
    with ExitStack() as stack:
        server = RedisServer(directory)
        stack.callback(server.stop)
        env = {
            "CELERY_BROKER_URL": server.url,
            "NOTIFIER_SEARCH_INDEX": str(directory / "search-index.sqlite3"),
            "NOTIFIER_SEARCH_RESOURCES": "article",
            "NOTIFIER_SEARCH_PARENTS": "blog",
            "NOTIFIER_LISTENERS": "tests.integration.convergence_listeners",
            # A killed worker's messages come back within seconds.
            "NOTIFIER_VISIBILITY_TIMEOUT": "4",
            "CONVERGENCE_SEED": str(seed),
            "CONVERGENCE_REDELIVER": str(redeliver),
        }
        pool: list[CeleryWorker] = []

        def start_worker() -> None:
            worker = CeleryWorker(directory, env, name=f"worker{len(pool) + report.workers_killed}")
            stack.callback(worker.stop)
            pool.append(worker)

        for _ in range(workers):
            start_worker()
        web = WebApp(directory, env)
        stack.callback(web.stop)
        say(f"{workers} workers, redis-server {server.url}, example app {web.url}")
        writer = Writer(seed, Client(web.url), report)
        kill_at = {operations * (n + 1) // (kills + 1) for n in range(kills)}
        for n in range(operations):
            if n in kill_at:
                victim = pool.pop(writer.random.randrange(len(pool)))
                victim.kill()
                report.workers_killed += 1
                say(f"operation {n}: killed {victim.name} (pid {victim.pid}), starting another")
                start_worker()
            writer.step()
            if n and n % 1000 == 0:
                say(f"{n} operations")
        say(f"{report.operations} operations done; waiting for the workers")
        client = redis.Redis.from_url(server.url)
        database = database_articles(directory / "articles.sqlite3")
        copies: dict[str, Callable[[], Copy]] = {
            "search index": lambda: index_articles(directory / "search-index.sqlite3"),
            "ordered mirror": lambda: mirror_articles(client),
        }
        deadline = time.monotonic() + settle
        agreed = 0  # checks in a row that found the copies equal, with nothing left to deliver
        while agreed < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            settled = quiet(client)
            report.diverged = {name: differences(database, read()) for name, read in copies.items()}
            report.diverged = {name: keys for name, keys in report.diverged.items() if keys}
            agreed = agreed + 1 if settled and not report.diverged else 0
        if agreed < 2 and not report.diverged:
            report.diverged = {"broker": ["messages still undelivered after the settle time"]}
        report.articles = len(database)
        report.redeliveries = int(client.scard(REDELIVERED))
        report.dead_letters = int(client.zcard("notifier:dead_letters:order"))
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--redeliver", type=float, default=0.05)
    parser.add_argument("--settle", type=float, default=300.0)
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notifier-soak-") as directory:
        report = run(
            Path(directory),
            seed=arguments.seed,
            operations=arguments.operations,
            workers=arguments.workers,
            kills=arguments.kills,
            redeliver=arguments.redeliver,
            settle=arguments.settle,
            say=lambda line: print(line, flush=True),
        )
    for line in report.lines():
        print(line)
    return 1 if report.objects_diverged or report.dead_letters else 0


if __name__ == "__main__":
    sys.exit(main())
