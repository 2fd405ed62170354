"""The outbox table, ``notifier_outbox``, and the SQL that every use of it runs.

One row per message: its task id (unique: a message is written once), its queue, the message
as JSON and when it was written. The table is created by ``notifier-outbox create``
(:func:`create_table`), never by a request. PostgreSQL and SQLite are the databases it knows.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from notifier.errors import ConfigurationError

__all__ = [
    "ANY_DUE",
    "CLAIM",
    "DELETE",
    "EXISTING",
    "INSERT",
    "TABLE",
    "WAITING",
    "create_table",
    "dialect_of",
    "engine_for",
    "table_exists",
]

TABLE = "notifier_outbox"

_SCHEMAS = {
    "postgresql": f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            id BIGSERIAL PRIMARY KEY,
            task_id TEXT NOT NULL UNIQUE,
            queue TEXT NOT NULL,
            message TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL
        )""",
    "sqlite": f"""
        CREATE TABLE IF NOT EXISTS {TABLE} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id TEXT NOT NULL UNIQUE,
            queue TEXT NOT NULL,
            message TEXT NOT NULL,
            created REAL NOT NULL
        )""",
}
INSERT = sa.text(
    f"INSERT INTO {TABLE} (task_id, queue, message, created) "
    "VALUES (:task_id, :queue, :message, :created)"
)
DELETE = sa.text(f"DELETE FROM {TABLE} WHERE task_id IN :task_ids").bindparams(
    sa.bindparam("task_ids", expanding=True, type_=sa.Text)
)
EXISTING = sa.text(f"SELECT task_id FROM {TABLE} WHERE task_id IN :task_ids").bindparams(
    sa.bindparam("task_ids", expanding=True, type_=sa.Text)
)
_WHERE_DUE = f"FROM {TABLE} WHERE id > :after AND (created < :cutoff OR task_id IN :failed)"
_DUE = f"SELECT id, task_id, queue, message {_WHERE_DUE} ORDER BY id LIMIT :limit"
#: Whether a row is due, read without a lock: a relay that finds none takes no lock, which on
#: SQLite is the whole database's write lock.
ANY_DUE = sa.text(f"SELECT 1 {_WHERE_DUE} LIMIT 1").bindparams(
    sa.bindparam("failed", expanding=True, type_=sa.Text)
)
#: The relay's claim of a batch of due rows, per dialect. On PostgreSQL the rows are locked
#: with ``FOR UPDATE SKIP LOCKED``, so that relays of several processes never publish one row
#: at the same time; SQLite has no row locks: the relay takes its write lock instead.
CLAIM = {
    name: sa.text(sql).bindparams(sa.bindparam("failed", expanding=True, type_=sa.Text))
    for name, sql in [("postgresql", f"{_DUE} FOR UPDATE SKIP LOCKED"), ("sqlite", _DUE)]
}
#: How many rows wait, and the oldest's time of writing.
WAITING = sa.text(f"SELECT count(*), min(created) FROM {TABLE} WHERE created <= :cutoff")


def dialect_of(engine: Engine, key: str, url: str) -> str:
    """The name of ``engine``'s database (``postgresql``, ``sqlite``); raise
    :class:`~notifier.errors.ConfigurationError` naming ``key`` and ``url`` for another one."""
    name = engine.dialect.name
    if name not in _SCHEMAS:
        raise ConfigurationError(key, url, "a PostgreSQL or SQLite database URL")
    return name


def engine_for(url: str, **options: Any) -> Engine:
    """An engine of ``url``. A ``postgresql://`` URL without a driver takes psycopg2 when
    psycopg (3) is not installed, as Kinto does (SQLAlchemy 2.1 would take psycopg)."""
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return sa.create_engine(parsed, **options)


def create_table(url: str) -> None:
    """Create the outbox table in the database at ``url`` (nothing if it is there)."""
    engine = engine_for(url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(_SCHEMAS[dialect_of(engine, "--url", url)])
    finally:
        engine.dispose()


def table_exists(engine: Engine) -> bool:
    """Whether the outbox table is in ``engine``'s database."""
    return sa.inspect(engine).has_table(TABLE)
