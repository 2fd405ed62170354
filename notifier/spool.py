"""The spool: messages the broker did not take, kept on local disk until it does.

Each web process appends to a SQLite file of its own in the spool directory
(``spool-<name>-<host>-<pid>-<token>.sqlite3``, the name being the publisher's: ``notifier``,
or a configured listener's), which it holds with an exclusive lock while it lives. A background
thread of the process publishes the file's messages again, oldest first, once the broker
answers; while the file holds messages, new ones are appended behind them, so that they reach
the broker in their original order. A file whose process is gone is no longer locked: a
process that starts publishes such files first (:meth:`Spool.start`), and so does
``notifier-spool flush``.

A message may be published twice (when its process dies between publishing and deleting it):
its ``event_id`` tells.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import IO

from notifier.message import Message, decode

__all__ = ["Spool", "SpoolFile"]

logger = logging.getLogger("notifier")

Publish = Callable[[Message, str], None]

_SCHEMA = "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY, queue TEXT, message TEXT)"


class SpoolFile:
    """One spool file, and the lock that says a living process owns it."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO spool (queue, message) VALUES (?, ?)",
                (queue, json.dumps(message.as_dict())),
            )

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        with self._connect() as connection:
            return int(connection.execute("SELECT count(*) FROM spool").fetchone()[0])

    def flush(self, publish: Publish) -> int:
        """Publish the messages oldest first, each deleted once published; stop at the first
        the broker does not take. Return how many were published."""
        published = 0
        while True:
            with self._connect() as connection:
                row = connection.execute(
                    "SELECT id, queue, message FROM spool ORDER BY id LIMIT 1"
                ).fetchone()
            if row is None:
                return published
            row_id, queue, text = row
            try:
                publish(decode(json.loads(text)), queue)
            except Exception as exc:  # the broker still fails: the rest waits for next time
                logger.info("spool %s: %d messages left: %s", self.path.name, len(self), exc)
                return published
            with self._connect() as connection:
                connection.execute("DELETE FROM spool WHERE id = ?", (row_id,))
            published += 1


class Spool:
    """The spool directory, as one web process uses it.

    :meth:`keep` appends a message to this process's file and wakes the background thread,
    which publishes the file again (and any file left by a process that is gone) every
    ``retry`` seconds until it is empty.
    """

    def __init__(
        self, directory: str | Path, publish: Publish, retry: float = 1.0, name: str = "notifier"
    ) -> None:
        self.directory = Path(directory)
        self.publish = publish
        self.name = name
        self.retry = retry
        self._reset()
        # A child forked while the thread held the lock would wait for it for ever: each
        # process starts afresh, with a file and a thread of its own.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._own: SpoolFile | None = None
        self._holding = False  # whether self._own holds messages
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None

    def _own_file(self) -> SpoolFile:
        if self._own is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            # The token keeps two spools of one process (two apps, say), or a process that
            # got the pid of a dead one, apart.
            own = SpoolFile(
                self.directory / f"spool-{self.name}-{socket.gethostname()}-{self._pid}-"
                f"{uuid.uuid4().hex[:8]}.sqlite3"
            )
            own.lock()
            self._own = own
        return self._own

    def holds_messages(self) -> bool:
        """Whether this process has messages waiting: new ones must queue behind them."""
        # Asked before every publish: kept in memory, so that a process that once spooled does
        # not read its file on each request for the rest of its life.
        return self._holding

    def start(self) -> None:
        """Publish, in the background, what processes that are gone left in the directory."""
        free = self._free_files()
        waiting = sum(len(spool_file) for spool_file in free)
        for spool_file in free:
            spool_file.unlock()
        if waiting:
            logger.info("%d messages left by processes that are gone: publishing them", waiting)
            with self._mutex:
                self._wake.set()
                self._start_thread()

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="notifier-spool", daemon=True)
            self._thread.start()

    def keep(self, message: Message, queue: str) -> None:
        """Append ``message`` for ``queue``; the background thread publishes it later."""
        with self._mutex:
            self._own_file().append(message, queue)
            self._holding = True
            self._wake.set()
            self._start_thread()

    def flush(self) -> int:
        """Publish what this process and the processes that are gone left, oldest first in each
        file; stop a file at its first failure. Return how many were published."""
        published = 0
        for spool_file in self.files():
            try:
                published += spool_file.flush(self.publish)
            finally:
                if spool_file is not self._own:
                    spool_file.unlock()
        with self._mutex:
            # Under the lock keep() appends under: a message kept meanwhile is not forgotten.
            self._holding = self._own is not None and len(self._own) > 0
            if not self._holding:
                self._wake.clear()
        return published

    def files(self) -> list[SpoolFile]:
        """The files no living process holds (older: first), then this process's own."""
        found = self._free_files()
        if self._own is not None:
            found.append(self._own)
        return found

    def _free_files(self) -> list[SpoolFile]:
        # Each returned file is locked for this process until flush() unlocks it.
        found: list[SpoolFile] = []
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob(f"spool-{self.name}-*.sqlite3")):
            if self._own is not None and path == self._own.path:
                continue
            candidate = SpoolFile(path)
            if candidate.lock():
                found.append(candidate)
        return found

    def _run(self) -> None:
        while True:
            self._wake.wait()  # until keep() has something
            time.sleep(self.retry)  # give the broker a moment
            published = self.flush()  # clears the wake once this process's file is empty
            if published:
                logger.info("published %d spooled messages", published)


def main(argv: list[str] | None = None) -> int:
    """``notifier-spool``: look into a spool directory, and publish what dead processes left."""
    import argparse

    from notifier.publisher import CeleryPublisher

    parser = argparse.ArgumentParser(
        prog="notifier-spool", description="Messages the broker did not take, kept on disk."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the spool files and how many messages each holds")
    listing.add_argument("directory")
    flushing = commands.add_parser(
        "flush", help="publish the files no running process holds, oldest message first"
    )
    flushing.add_argument("directory")
    flushing.add_argument("--broker-url", required=True, help="e.g. redis://localhost:6379/0")
    flushing.add_argument("--name", default="notifier", help="whose files (default: notifier)")
    flushing.add_argument("--timeout", type=float, default=5.0, help="seconds per broker call")
    arguments = parser.parse_args(argv)

    directory = Path(arguments.directory)
    if not directory.is_dir():
        parser.exit(2, f"notifier-spool: {directory} is not a directory\n")
    if arguments.command == "list":
        paths = sorted(directory.glob("spool-*.sqlite3"))
        for path in paths:
            spool_file = SpoolFile(path)
            held = "free" if spool_file.lock() else "held by a running process"
            spool_file.unlock()
            print(f"{path.name}  {len(spool_file)} messages  {held}")
        print(f"{len(paths)} spool files")
        return 0

    publisher = CeleryPublisher(arguments.broker_url, arguments.timeout)
    spool = Spool(directory, publisher.publish, name=arguments.name)
    try:
        published = spool.flush()
    finally:
        publisher.close()
    left = 0
    for spool_file in spool.files():  # the free files, as flush left them
        left += len(spool_file)
        spool_file.unlock()
    print(f"published {published} messages; {left} left in free spool files")
    return 0 if left == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
