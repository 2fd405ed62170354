"""The outbox's relay on a real PostgreSQL: relays of several processes at once publish every row
left behind exactly once, oldest first (``FOR UPDATE SKIP LOCKED``), and none that is younger
than ``relay_after``."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import sqlalchemy as sa

from notifier.outbox import TABLE, Outbox, create_table, engine_for
from notifier.wire.message import Message, encode
from tests.integration.postgres import PostgresServer


def article(n: int) -> Message:
    payload = {"resource_name": "article", "action": "create", "article_id": f"a{n}"}
    return encode(payload, [{"new": {"id": f"a{n}"}}], [0], request_id=uuid.uuid4().hex)


def leave_rows(engine: sa.Engine, messages: list[Message], *, age: float) -> None:
    """Rows that web processes committed ``age`` seconds ago, and died before publishing."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                f"INSERT INTO {TABLE} (task_id, queue, message, created) "
                "VALUES (:task_id, 'notifier', :message, :created)"
            ),
            [
                {
                    "task_id": message.task_id,
                    "message": json.dumps(message.as_dict()),
                    "created": time.time() - age,
                }
                for message in messages
            ],
        )


def test_three_relays_at_once_publish_every_row_a_dead_process_left_exactly_once(
    postgres: PostgresServer,
):
    url = postgres.create_database(f"outbox_{uuid.uuid4().hex[:8]}")
    create_table(url)
    engines = [engine_for(url) for _ in range(3)]
    old = [article(n) for n in range(300)]
    young = [article(n) for n in range(300, 310)]
    leave_rows(engines[0], old, age=60)
    leave_rows(engines[0], young, age=0)
    published: list[str] = []
    lock = threading.Lock()

    def publish(message: Message, queue: str) -> None:
        time.sleep(0.001)  # long enough for the relays to overlap
        with lock:
            published.append(message.task_id)

    relays = [Outbox(engine, publish, relay_after=10, batch=20) for engine in engines]
    start = threading.Barrier(len(relays))

    def run(relay: Outbox) -> None:
        start.wait()
        relay.relay()

    threads = [threading.Thread(target=run, args=(relay,)) for relay in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    counts = Counter(published)
    assert sorted(counts) == sorted(message.task_id for message in old)
    assert max(counts.values()) == 1
    with engines[0].connect() as connection:
        left = [row[0] for row in connection.execute(sa.text(f"SELECT task_id FROM {TABLE}"))]
    assert sorted(left) == sorted(message.task_id for message in young)
    for engine in engines:
        engine.dispose()
