"""Kinto 26 on a real PostgreSQL: every committed change reaches the listener, and nothing else.

What committed is read from the database itself: a trigger logs every write to Kinto's objects in
``change_log``, in the writing transaction (tests/integration/change_log.py). What the listener
received is what ``record_kinto_changes`` (tests/integration/listeners.py) recorded. Each Kinto
(the batches' with and without the outbox, each chaos run's) gets a database of its own on the
session's PostgreSQL server, ``kinto migrate``d, with the change log, and, with the
transactional outbox, the outbox table (``python -m notifier.outbox create``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration import change_log
from tests.integration.conftest import own_redis_server
from tests.integration.convergence import quiet
from tests.integration.kinto_app import KintoServer, migrate, postgresql_backends
from tests.integration.kinto_chaos import (
    CONFLICT,
    MOST_CHANGES_PER_REQUEST,
    send,
    write_while_killing,
)
from tests.integration.postgres import PostgresServer
from tests.integration.received import Received
from tests.support.processes import ROOT, CeleryWorker, RedisServer, wait_until

LISTENER = "record_kinto_changes"
OUTBOX = "notifier_outbox"


def celery_listener(broker_url: str, *, outbox: bool) -> str:
    """Kinto's settings for notifier's listener, as Kinto documents configured listeners."""
    settings = (
        "kinto.event_listeners = celery\n"
        "kinto.event_listeners.celery.use = notifier.listeners.celery\n"
        f"kinto.event_listeners.celery.broker_url = {broker_url}\n"
        "kinto.event_listeners.celery.resources = bucket collection record\n"
    )
    if outbox:
        # The relay publishes the rows older than a second: what a killed Kinto left.
        settings += (
            "kinto.event_listeners.celery.outbox = true\n"
            "kinto.event_listeners.celery.outbox_relay_after = 1\n"
        )
    return settings


def create_outbox(url: str) -> None:
    """``notifier-outbox create --url``: the outbox table, in Kinto's database."""
    command = subprocess.run(
        [sys.executable, "-m", "notifier.outbox", "create", "--url", url],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=60,
    )  # fmt: skip
    if command.returncode != 0:
        raise RuntimeError(f"notifier-outbox create failed:\n{command.stdout}{command.stderr}")


@dataclass
class Database:
    """A database of Kinto's, with its change log (and the outbox table, with the outbox)."""

    url: str
    connection: Any  # psycopg2, autocommit
    outbox: bool

    def live_records(self, parent_id: str) -> set[str]:
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM objects"
                " WHERE parent_id = %s AND resource_name = 'record' AND NOT deleted",
                (parent_id,),
            )
            return {row[0] for row in cursor.fetchall()}

    def outbox_rows(self) -> int:
        if not self.outbox:
            return 0
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {OUTBOX}")
            return int(cursor.fetchone()[0])


def kinto_database(
    postgres: PostgresServer, directory: Path, name: str, *, outbox: bool
) -> Database:
    url = postgres.create_database(name)
    migrate(directory, url)
    connection = postgres.connect(name)
    change_log.install(connection)
    if outbox:
        create_outbox(url)
    return Database(url, connection, outbox)


# a) and b): a batch with conflicts, through the session's worker.


@pytest.fixture(scope="module", params=[False, True], ids=["without-outbox", "with-outbox"])
def on_postgresql(request, postgres, deployment_env, worker, tmp_path_factory):
    """Kinto on PostgreSQL, with notifier's listener (and its outbox, or not)."""
    outbox = request.param
    directory = tmp_path_factory.mktemp("kinto-postgresql")
    database = kinto_database(postgres, directory, f"batches_outbox_{outbox}", outbox=outbox)
    server = KintoServer(
        directory,
        celery_listener(deployment_env["CELERY_BROKER_URL"], outbox=outbox),
        backends=postgresql_backends(database.url),
    )
    yield server, database
    server.stop()
    database.connection.close()


def new_collection(kinto: KintoServer) -> tuple[str, str]:
    """A new bucket's collection ``c1``: its bucket's id and its objects' parent_id."""
    bucket_id = f"b{uuid.uuid4().hex[:8]}"
    assert send("PUT", f"{kinto.url}/buckets/{bucket_id}", {"data": {}})[0] == 201
    assert send("PUT", f"{kinto.url}/buckets/{bucket_id}/collections/c1", {"data": {}})[0] == 201
    return bucket_id, f"/buckets/{bucket_id}/collections/c1"


def batch(kinto: KintoServer, parent_id: str, steps: list[str]) -> list[int]:
    """One /batch of record creates (ids) and conflicts ("conflict"): its statuses."""
    requests = [
        CONFLICT
        if step == "conflict"
        else {"method": "POST", "path": f"{parent_id}/records", "body": {"data": {"id": step}}}
        for step in steps
    ]
    status, body = send("POST", f"{kinto.url}/batch", {"requests": requests})
    assert status == 200
    return [response["status"] for response in body["responses"]]


def received_after(
    received: Received, parent_id: str, expected: list[change_log.Change], timeout: float = 10
) -> list[change_log.Change]:
    """The changes of ``parent_id`` received once ``expected`` were (or ``timeout`` passed),
    and a little more, for anything that should not come."""

    def changes() -> list[change_log.Change]:
        return change_log.received(received.by(LISTENER), parent_id)

    with suppress(TimeoutError):  # the comparison says what is missing
        wait_until(lambda: set(expected) <= set(changes()), timeout, "the changes received")
    time.sleep(0.5)
    return changes()


def assert_received_exactly_what_committed(database: Database, received, parent_id) -> None:
    committed = change_log.committed(database.connection, parent_id)
    comparison = change_log.compare(committed, received_after(received, parent_id, committed))
    print(comparison)
    assert (comparison.lost, comparison.phantom, comparison.duplicated) == ([], [], {}), (
        f"\n{comparison}"
    )


def test_a_kinto_batch_with_a_conflict_in_the_middle_publishes_what_committed_and_nothing_else(
    on_postgresql, received
):
    kinto, database = on_postgresql
    _, parent_id = new_collection(kinto)

    statuses = batch(kinto, parent_id, ["r1", "r2", "conflict", "r3", "r4"])

    assert statuses == [201, 201, 409, 201, 201]
    # The 409 rolled r1 and r2 back; r3 and r4 committed in the transaction that followed.
    assert database.live_records(parent_id) == {"r3", "r4"}
    assert {c.id for c in change_log.committed(database.connection, parent_id)} == {"r3", "r4"}
    assert_received_exactly_what_committed(database, received, parent_id)


def test_kintos_heartbeat_checks_the_broker_and_the_outbox_when_kinto_writes_one(
    on_postgresql, request
):
    kinto, _database = on_postgresql
    with_outbox = request.node.callspec.params["on_postgresql"]

    status, beats = send("GET", f"{kinto.url}/__heartbeat__")

    assert status == 200
    assert beats["notifier_celery"] is True  # kinto.event_listeners = celery
    if with_outbox:
        assert beats["notifier_celery_outbox"] is True
    else:
        assert "notifier_celery_outbox" not in beats


def test_a_kinto_batch_with_two_conflicts_publishes_only_what_followed_the_last_one(
    on_postgresql, received
):
    kinto, database = on_postgresql
    _, parent_id = new_collection(kinto)

    statuses = batch(kinto, parent_id, ["r1", "conflict", "r2", "conflict", "r3", "r4"])

    assert statuses == [201, 409, 201, 409, 201, 201]
    assert database.live_records(parent_id) == {"r3", "r4"}
    assert_received_exactly_what_committed(database, received, parent_id)


# c): Kinto killed at random moments under concurrent writers, with a worker of its own.


@pytest.fixture(scope="module")
def chaos_broker(tmp_path_factory) -> Iterator[RedisServer]:
    server = own_redis_server(tmp_path_factory.mktemp("chaos-broker"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chaos_worker(chaos_broker, tmp_path_factory) -> Iterator[CeleryWorker]:
    directory = tmp_path_factory.mktemp("chaos-worker")
    env = {
        "CELERY_BROKER_URL": chaos_broker.url,
        "NOTIFIER_SEARCH_INDEX": str(directory / "search-index.sqlite3"),
        "NOTIFIER_SEARCH_RESOURCES": "article",
        "NOTIFIER_LISTENERS": "tests.integration.listeners",
    }
    process = CeleryWorker(directory, env, name="chaos-worker")
    yield process
    process.stop()


def settled(client: redis.Redis, database: Database, timeout: float) -> str | None:
    """Wait until the outbox is empty, the broker quiet and nothing more arrives for 2 s;
    what was left when that did not happen within ``timeout``."""
    last = (-1, 0.0)

    def done() -> bool:
        nonlocal last
        count = client.llen(f"received:{LISTENER}")
        if database.outbox_rows() or not quiet(client) or count != last[0]:
            last = (count, time.monotonic())
            return False
        return time.monotonic() - last[1] >= 2

    try:
        wait_until(done, timeout, "the outbox and the broker emptied, and the listener idle")
    except TimeoutError as error:
        queues = {
            key.decode(): client.llen(key)
            for key in client.scan_iter("notifier*")
            if client.type(key) == b"list" and client.llen(key)
        }
        return (
            f"{error}: {database.outbox_rows()} rows in {OUTBOX}, queues {queues}, "
            f"{client.hlen('unacked')} messages unacknowledged"
        )
    return None


@dataclass
class Outcome:
    """A chaos run: what it did, whether all settled, and what committed against what the
    listener received."""

    run: str
    unsettled: str | None
    comparison: change_log.Comparison

    def __str__(self) -> str:
        return "\n".join(filter(None, (self.run, self.unsettled, str(self.comparison))))


def kill_kinto_under_writers(
    postgres: PostgresServer,
    broker: RedisServer,
    directory: Path,
    *,
    outbox: bool,
    writers: int,
    kills: int,
    seconds: float,
    seed: int,
) -> Outcome:
    """Kinto killed under writers; once all settled, what committed against what the
    listener received."""
    database = kinto_database(postgres, directory, f"chaos_outbox_{outbox}", outbox=outbox)
    client = redis.Redis.from_url(broker.url)
    with ExitStack() as stack:
        stack.callback(database.connection.close)
        stack.callback(client.close)

        def start_kinto(port: int | None = None) -> KintoServer:
            server = KintoServer(
                directory,
                celery_listener(broker.url, outbox=outbox),
                backends=postgresql_backends(database.url),
                server="threads = 8\n",
                port=port,
            )
            stack.callback(server.stop)
            return server

        kinto = start_kinto()
        bucket_id = f"chaos-{uuid.uuid4().hex[:8]}"  # what a run before left is not counted
        assert send("PUT", f"{kinto.url}/buckets/{bucket_id}", {"data": {}})[0] == 201
        collections = [
            f"/buckets/{bucket_id}/collections/c{n}" for n in range(max(1, writers // 2))
        ]
        for collection in collections:
            assert send("PUT", f"{kinto.url}{collection}", {"data": {}})[0] == 201
        kinto, chaos = write_while_killing(
            kinto,
            lambda killed: start_kinto(killed.port),
            collections,
            writers=writers,
            kills=kills,
            seconds=seconds,
            seed=seed,
        )
        unsettled = settled(client, database, timeout=30)
        events = Received(client).by(LISTENER)
        comparison = change_log.compare(
            change_log.committed(database.connection),  # this run's own database
            change_log.received(e for e in events if e["payload"]["bucket_id"] == bucket_id),
        )
        kinto.check_alive()
    return Outcome(str(chaos), unsettled, comparison)


#: The seed of the writers' and the kills' random choices (CHAOS_SEED=n to try another).
CHAOS_SEED = int(os.environ.get("CHAOS_SEED", "10"))


def test_a_kinto_killed_at_random_moments_under_concurrent_writers_loses_nothing_with_the_outbox(
    postgres, chaos_broker, chaos_worker, tmp_path
):
    writers, kills = 8, 5
    outcome = kill_kinto_under_writers(
        postgres, chaos_broker, tmp_path,
        outbox=True, writers=writers, kills=kills, seconds=20, seed=CHAOS_SEED,
    )  # fmt: skip
    print(outcome)
    comparison = outcome.comparison

    assert outcome.unsettled is None, f"\n{outcome}"
    assert comparison.committed > 0
    assert (len(comparison.lost), len(comparison.phantom)) == (0, 0), f"\n{outcome}"
    # A message is published twice when Kinto dies after publishing it and before deleting
    # its outbox row: the relay publishes it again. At a kill, at most the requests in flight
    # (one per writer: each waits for its answer) are in that window, and a request changes
    # at most MOST_CHANGES_PER_REQUEST records. (A relay that took rows still being published
    # by a living Kinto, slower than outbox_relay_after, would add more: it should not.)
    most = kills * writers * MOST_CHANGES_PER_REQUEST
    assert len(comparison.duplicated) <= most, f"\n{outcome}"


def test_a_kinto_killed_at_random_moments_without_the_outbox_loses_what_it_had_not_published(
    postgres, chaos_broker, chaos_worker, tmp_path
):
    """A measure, not a promise: without the outbox, a killed Kinto loses the events of the
    transactions it committed and had not published yet. The test prints how many."""
    outcome = kill_kinto_under_writers(
        postgres, chaos_broker, tmp_path,
        outbox=False, writers=4, kills=2, seconds=8, seed=CHAOS_SEED,
    )  # fmt: skip
    print(outcome)

    assert outcome.unsettled is None, f"\n{outcome}"
    assert outcome.comparison.committed > 0
    assert outcome.comparison.received > 0
