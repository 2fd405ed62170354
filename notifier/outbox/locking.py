"""The transactions of the relay and of the outbox thread, and SQLite's write lock in them.

SQLite has no row locks: a writer takes the whole file's write lock, and while another
connection holds it SQLite's busy handler sleeps (1, 2, 5 ... 100 ms) between tries. The relay
takes that lock from the start (``BEGIN IMMEDIATE``), so that two relays never claim the same
rows. The outbox thread deletes the rows it published with ``wait=False``: when a request holds
the lock, :class:`WriteLockBusy` says so at once, and the thread publishes the next messages
rather than wait behind the request. On PostgreSQL a transaction is a plain one: its rows are
locked one by one (``FOR UPDATE SKIP LOCKED``), and a request never holds the outbox's.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

__all__ = ["WriteLockBusy", "transaction"]


class WriteLockBusy(Exception):
    """Raised when another connection holds SQLite's write lock and the caller would not wait."""


@contextlib.contextmanager
def transaction(engine: Engine, dialect: str, *, wait: bool = True) -> Iterator[Connection]:
    """A transaction of ``engine``; on SQLite with the write lock from the start, and, without
    ``wait``, :class:`WriteLockBusy` at once when another connection holds it."""
    if dialect == "postgresql":
        with engine.begin() as connection:
            yield connection
        return
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        _begin_immediate(connection, wait)
        try:
            yield connection
        except BaseException:
            connection.exec_driver_sql("ROLLBACK")
            raise
        try:
            connection.exec_driver_sql("COMMIT")
        except sa.exc.OperationalError:
            # A COMMIT that could not take the lock leaves the transaction open: end it, lest
            # the pooled connection keep the lock.
            with contextlib.suppress(sa.exc.OperationalError):
                connection.exec_driver_sql("ROLLBACK")
            raise


def _begin_immediate(connection: Connection, wait: bool) -> None:
    if wait:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        return
    timeout = int(connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one())
    connection.exec_driver_sql("PRAGMA busy_timeout = 0")
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    except sa.exc.OperationalError as exc:
        if not _is_busy(exc):
            raise
        raise WriteLockBusy(str(exc.orig)) from None
    finally:
        # Only the lock is taken without waiting: the COMMIT may wait for readers, and the
        # connection goes back to the engine's pool as it came.
        try:
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {timeout}")
        except BaseException:
            connection.invalidate()
            raise


_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_busy(exc: sa.exc.OperationalError) -> bool:
    return getattr(exc.orig, "sqlite_errorcode", None) in _BUSY  # Python >= 3.11
