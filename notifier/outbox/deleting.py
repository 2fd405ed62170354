"""The rows that the outbox thread published, until it deletes them.

The thread deletes them a few at a time (every ``DELETE_EVERY`` seconds, or once ``DELETE_BATCH``
are published): on SQLite each delete takes the database's write lock, which the app's requests
wait for, and it tries without waiting for a request's lock (it deletes later, and publishes
meanwhile). Half ``relay_after`` after a row's commit it waits for the lock: past
``relay_after`` any relay would take the row for one left behind, and publish it again. Until
deleted, a row stays in the table: a process that dies leaves it for a relay (at least once).
"""

from __future__ import annotations

import threading
import time

from sqlalchemy.engine import Engine

from notifier.outbox.locking import WriteLockBusy, transaction
from notifier.outbox.table import DELETE

__all__ = ["DELETE_BATCH", "DELETE_EVERY", "Published"]

#: At most this often (seconds), or once this many rows are published, the thread deletes.
DELETE_EVERY = 0.2
DELETE_BATCH = 500


class Published:
    """The task ids of the rows published and not yet deleted, each with the time
    (``time.monotonic()``) its message was submitted, just after its commit."""

    def __init__(self, engine: Engine, dialect: str, relay_after: float) -> None:
        self.engine = engine
        self.dialect = dialect
        self.relay_after = relay_after
        self._mutex = threading.Lock()
        self._rows: list[tuple[str, float]] = []
        self._next_delete = 0.0

    def add(self, task_id: str, submitted: float) -> None:
        with self._mutex:
            self._rows.append((task_id, submitted))

    def delete_when_due(self) -> None:
        """Delete the rows if it is time to; on SQLite, not waiting for the write lock unless
        the oldest is half ``relay_after`` old."""
        with self._mutex:
            if not self._rows:
                return
            count, oldest = len(self._rows), self._rows[0][1]
        now = time.monotonic()
        if now - oldest >= self.relay_after / 2:
            self.delete(wait=True)
        elif count >= DELETE_BATCH or now >= self._next_delete:
            self.delete(wait=False)

    def delete(self, *, wait: bool = True) -> None:
        """Delete the rows; without ``wait``, on SQLite, leave them for next time when another
        connection holds the write lock."""
        self._next_delete = time.monotonic() + DELETE_EVERY
        with self._mutex:
            done, self._rows = self._rows, []
        for start in range(0, len(done), DELETE_BATCH):
            chunk = [task_id for task_id, _ in done[start : start + DELETE_BATCH]]
            try:
                with transaction(self.engine, self.dialect, wait=wait) as connection:
                    connection.execute(DELETE, {"task_ids": chunk})
            except WriteLockBusy:
                self._put_back(done[start:])
                return
            except Exception:
                self._put_back(done[start:])  # tried again next time
                raise

    def _put_back(self, rows: list[tuple[str, float]]) -> None:
        with self._mutex:  # before those published since: oldest first
            self._rows[:0] = rows
