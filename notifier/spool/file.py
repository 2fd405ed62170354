"""One spool file: a SQLite file of messages, and the lock that says a living process owns it.

Each web process appends to a file of its own in the spool directory
(``spool-<name>-<host>-<pid>-<token>.sqlite3``), which it holds with an exclusive lock
(``flock`` on ``<file>.lock``) while it lives; a file no process holds was left by one that is
gone, and any process may publish it. A message leaves its file only once the broker took it.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import IO

from notifier.wire.message import Message, decode

__all__ = ["Publish", "SpoolFile"]

Publish = Callable[[Message, str], None]

_SCHEMA = "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY, queue TEXT, message TEXT)"


class SpoolFile:
    """One spool file, and the lock that says a living process owns it.

    ``published_through``: the messages up to this row were published but could not be
    deleted yet (a full disk); :meth:`flush` does not publish them again, and deletes them
    first. It is 0 once they are deleted, for SQLite may give a new row a deleted one's id.
    """

    def __init__(self, path: Path, published_through: int = 0) -> None:
        self.path = path
        self.published_through = published_through
        self._lock: IO[bytes] | None = None

    def lock(self) -> bool:
        """Take the file for this process; ``False`` when another living process holds it."""
        if self._lock is not None:
            return True
        handle = open(f"{self.path}.lock", "ab")  # noqa: SIM115  (held as long as the process)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # on disk when append returns
            with connection:
                connection.execute(_SCHEMA)
                yield connection

    def append(self, message: Message, queue: str) -> None:
        self.append_all([(message, queue)])

    def append_all(self, messages: Iterable[tuple[Message, str]]) -> None:
        """Append ``messages`` (each with its queue) in one transaction: all, or none."""
        with self._connect() as connection:
            connection.executemany(
                "INSERT INTO spool (queue, message) VALUES (?, ?)",
                ((queue, json.dumps(message.as_dict())) for message, queue in messages),
            )

    def __len__(self) -> int:
        """How many messages wait to be published."""
        if not self.path.exists():
            return 0
        with self._connect() as connection:
            (count,) = connection.execute(
                "SELECT count(*) FROM spool WHERE id > ?", (self.published_through,)
            ).fetchone()
            return int(count)

    def flush(self, publish: Publish) -> int:
        """Publish the messages oldest first, each deleted once published; stop at the first
        the broker does not take. Return how many were published.

        Raise what SQLite raises when the file cannot be read, or when what was published
        cannot be deleted (a full disk): those are not published again by this object."""
        if not self.path.exists():
            return 0
        published = 0
        with self._connect() as connection:
            self._delete_published(connection)
            while True:
                rows = connection.execute(
                    "SELECT id, queue, message FROM spool WHERE id > ? ORDER BY id LIMIT 100",
                    (self.published_through,),
                ).fetchall()
                if not rows:
                    self._delete_published(connection, quietly=False)  # say why they stay
                    return published
                for row_id, queue, text in rows:
                    message = decode(json.loads(text))
                    try:
                        publish(message, queue)
                    except Exception:  # the broker does not take it: the rest waits
                        return published
                    self.published_through = row_id
                    published += 1
                    self._delete_published(connection)

    def _delete_published(self, connection: sqlite3.Connection, quietly: bool = True) -> None:
        if not self.published_through:
            return
        try:
            connection.execute("DELETE FROM spool WHERE id <= ?", (self.published_through,))
            connection.commit()
        except sqlite3.Error:
            connection.rollback()
            if not quietly:
                raise
        else:
            self.published_through = 0
