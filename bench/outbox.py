"""6. Kinto on PostgreSQL: a write with no listener, with notifier (published after the commit,
the spool as fallback) and with notifier's transactional outbox (rows written in Kinto's
transaction, published after the commit, deleted by the relay thread), side by side.

A PostgreSQL of the bench's own (tests/integration/postgres.py), one database per Kinto; each
Kinto in process (WSGI, no HTTP server), each listener's messages in a Redis database of its
own. After the run the row checks what it measured: every write stored, every message in
Redis once, the outbox empty, nothing from the Kinto without a listener; else it says FAILED.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import random
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from webob import Request

from bench.measure import RECORD, Row, ms, percentile, timed

if TYPE_CHECKING:
    from tests.integration.postgres import PostgresServer

AUTHORIZATION = "Basic " + base64.b64encode(b"bench:secret").decode()
RECORDS = "/v1/buckets/b/collections/c/records"
NO_LISTENER, NOTIFIER, OUTBOX = "no listener", "notifier", "notifier + outbox"
WARM_UP = 30  # writes per Kinto before the clock runs: connections, caches, code paths
OUTBOX_DRAINED = 5.0  # seconds the relay thread has to delete the published rows


@dataclass
class Kinto:
    """One Kinto under test: its app, its database and the Redis database of its messages."""

    name: str
    app: Any
    database: str
    redis_db: int | None

    def call(self, method: str, path: str, data: dict[str, Any]) -> Any:
        request = Request.blank(
            path,
            method=method,
            body=json.dumps({"data": data}).encode(),
            content_type="application/json",
            headers={"Authorization": AUTHORIZATION},
        )
        return request.get_response(self.app)

    def post(self) -> None:
        response = self.call("POST", RECORDS, {"title": RECORD["title"], "body": RECORD["body"]})
        assert response.status_int == 201, response.text


def missing() -> str | None:
    """Why this section cannot run here, if it cannot."""
    for module in ("kinto", "psycopg2", "sqlalchemy"):
        if importlib.util.find_spec(module) is None:
            return f"no {module}: pip install --group test"
    from tests.integration.postgres import postgres_binaries

    if postgres_binaries() is None:
        return "no PostgreSQL: install it, or pip install pgserver"
    return None


def kinto_app(url: str, listener: dict[str, str]) -> Any:
    """Kinto on the PostgreSQL database at ``url`` (storage and permissions), its schema made."""
    import kinto

    with warnings.catch_warnings():
        # Permissions share the storage's connection pool, as in most deployments.
        warnings.filterwarnings("ignore", "Reuse existing PostgreSQL connection", UserWarning)
        app = kinto.main(
            {},
            http_scheme="https",
            storage_backend="kinto.core.storage.postgresql",
            storage_url=url,
            permission_backend="kinto.core.permission.postgresql",
            permission_url=url,
            cache_backend="kinto.core.cache.memory",
            userid_hmac_secret="a-secret-for-the-bench-only",
            bucket_create_principals="system.Everyone",
            **{"multiauth.policies": "basicauth"},
            **listener,
        )
    app.registry.storage.initialize_schema()  # what `kinto migrate` does
    app.registry.permission.initialize_schema()
    return app


def celery_listener(broker_url: str, directory: Path, *, outbox: bool) -> dict[str, str]:
    settings = {
        "event_listeners": "celery",
        "event_listeners.celery.use": "notifier.listeners.celery",
        "event_listeners.celery.broker_url": broker_url,
        "event_listeners.celery.resources": "record",  # not the set-up's bucket and collection
        "event_listeners.celery.spool_dir": str(directory / "kinto-spool"),
    }
    if outbox:
        settings["event_listeners.celery.outbox"] = "true"
    return settings


def start_kintos(postgres: PostgresServer, redis_url: str, directory: Path) -> list[Kinto]:
    from notifier.outbox import create_table

    base = redis_url.rsplit("/", 1)[0]
    wanted = [
        (NO_LISTENER, "kinto_none", None, {}),
        (NOTIFIER, "kinto_notifier", 3, celery_listener(f"{base}/3", directory, outbox=False)),
        (OUTBOX, "kinto_outbox", 4, celery_listener(f"{base}/4", directory, outbox=True)),
    ]
    kintos = []
    for name, database, redis_db, listener in wanted:
        url = postgres.create_database(database)
        connection = postgres.connect()
        try:
            with connection.cursor() as cursor:  # Kinto wants its timestamps in UTC
                cursor.execute(f"ALTER DATABASE {database} SET timezone TO 'UTC'")
        finally:
            connection.close()
        if listener.get("event_listeners.celery.outbox"):
            create_table(url)  # before Kinto starts: a missing table fails its start-up
        kinto = Kinto(name, kinto_app(url, listener), database, redis_db)
        for path in ("/v1/buckets/b", "/v1/buckets/b/collections/c"):
            response = kinto.call("PUT", path, {})
            assert response.status_int == 201, response.text
        kintos.append(kinto)
    return kintos


def queued(redis_url: str) -> dict[int, int]:
    """The messages in the queue ``notifier`` of each Redis database that holds keys."""
    base = redis_url.rsplit("/", 1)[0]
    with redis.Redis.from_url(f"{base}/0") as client:
        databases = [int(name.removeprefix("db")) for name in client.info("keyspace")]
    counts = {}
    for db in databases:
        with redis.Redis.from_url(f"{base}/{db}") as client:
            counts[db] = int(client.llen("notifier"))
    return counts


def scalar(postgres: PostgresServer, database: str, sql: str) -> int:
    connection = postgres.connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


def check(
    kinto: Kinto,
    posts: int,
    postgres: PostgresServer,
    listeners_dbs: set[int],
    before: dict[int, int],
    after: dict[int, int],
) -> str | None:
    """Why ``kinto``'s figures are not what they say, if they are not. ``listeners_dbs``: the
    Redis databases of the Kintos with a listener; ``before`` and ``after`` the run, the
    messages in each Redis database."""
    stored = scalar(
        postgres,
        kinto.database,
        "SELECT count(*) FROM objects WHERE resource_name = 'record' AND NOT deleted",
    )
    if stored != posts:
        return f"{stored} records stored for {posts} POSTs"
    if kinto.redis_db is None:
        others = set(after) - listeners_dbs
        grown = sorted(db for db in others if after[db] != before.get(db, 0))
        return f"messages appeared in Redis db {grown}" if grown else None
    messages = after.get(kinto.redis_db, 0) - before.get(kinto.redis_db, 0)
    if messages != posts:
        return f"{messages} messages in Redis db {kinto.redis_db} for {posts} POSTs"
    if kinto.name == OUTBOX:

        def rows() -> int:
            return scalar(postgres, kinto.database, "SELECT count(*) FROM notifier_outbox")

        deadline = time.monotonic() + OUTBOX_DRAINED
        while rows() and time.monotonic() < deadline:
            time.sleep(0.05)
        if left := rows():
            return f"notifier_outbox not empty {OUTBOX_DRAINED:g} s after the run: {left} rows"
    return None


def measure(kintos: list[Kinto], rounds: int, requests: int) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {kinto.name: [] for kinto in kintos}
    for kinto in kintos:
        timed(kinto.post, WARM_UP)
    # One write to each Kinto in turn, in a new order each turn: on a shared machine the load
    # changes within a second, which would favour one Kinto if each ran a block of its own,
    # and a fixed order makes each Kinto follow the same other (and what it left running).
    order = random.Random(0)
    for _ in range(rounds * requests):
        for kinto in order.sample(kintos, len(kintos)):
            latencies[kinto.name] += timed(kinto.post, 1)
    return latencies


def label(name: str) -> str:
    return f"6. Kinto on PostgreSQL: POST, {name}"


def signed_us(seconds: float) -> str:
    return f"{seconds * 1e6:+,.0f} µs"


def bench_kinto_postgresql(
    redis_url: str, directory: Path, rounds: int, requests: int
) -> list[Row]:
    """The rows of section 6; a FAILED row, not an exception, when something broke."""
    reason = missing()
    if reason:
        return [(label("no listener, notifier, notifier + outbox"), "SKIPPED", "", reason)]
    try:
        latencies, failed = run(redis_url, directory, rounds, requests)
    except Exception as exc:  # the other sections' rows are still worth printing
        traceback.print_exc(file=sys.stderr)
        return [(label("no listener, notifier, notifier + outbox"), "FAILED", "", repr(exc))]
    median = {name: statistics.median(values) for name, values in latencies.items()}
    rows: list[Row] = []
    for name, values in latencies.items():
        if failed[name]:
            rows.append((label(name), "FAILED", "", str(failed[name])))
            continue
        added = median[name] - median[NO_LISTENER]
        share = added / median[NO_LISTENER] * 100
        ratio = "" if name == NO_LISTENER else f"{signed_us(added)} = {share:+.1f} %"
        if name == OUTBOX and not failed[NOTIFIER]:
            ratio += f"; {signed_us(median[OUTBOX] - median[NOTIFIER])} over notifier"
        if name != NO_LISTENER and failed[NO_LISTENER]:
            ratio = "no ratio: the Kinto without a listener FAILED"
        rows.append((label(name), ms(median[name]), ms(percentile(values, 0.99)), ratio))
    return rows


def run(
    redis_url: str, directory: Path, rounds: int, requests: int
) -> tuple[dict[str, list[float]], dict[str, str | None]]:
    """Each Kinto's latencies, and why its figures are wrong (None: they are right)."""
    from tests.integration.postgres import PostgresServer

    postgres = PostgresServer(directory, database="bench")
    try:
        before = queued(redis_url)
        kintos = start_kintos(postgres, redis_url, directory)
        latencies = measure(kintos, rounds, requests)
        posts = WARM_UP + rounds * requests
        after = queued(redis_url)
        listeners_dbs = {kinto.redis_db for kinto in kintos if kinto.redis_db is not None}
        failed = {
            kinto.name: check(kinto, posts, postgres, listeners_dbs, before, after)
            for kinto in kintos
        }
    finally:
        postgres.stop()
    return latencies, failed
