"""The spool: messages the broker did not take, kept until it does.

Each web process appends to a SQLite file of its own in the spool directory
(``spool-<name>-<host>-<pid>-<token>.sqlite3``, the name being the publisher's: ``notifier``,
or a configured listener's), which it holds with an exclusive lock while it lives. While the
process holds messages, new ones are kept behind them, so that they reach the broker in their
original order.

A background thread publishes them again every ``retry`` seconds while anything waits,
however long the broker stays down: this process's file first, oldest first, then what it
holds in memory (below), then the files of processes that are gone (no longer locked; a
starting process publishes them, :meth:`Spool.start`, and so does ``notifier-spool flush``).
Nothing stops it: an error is logged and the next round comes; a message leaves its file only
once the broker took it.

When the file cannot take a message (a full or read-only disk), the message waits in a
bounded queue in memory, logged at CRITICAL with its id, and moves to the file once the file
takes messages again. Only a message that the memory queue has no room for either is lost:
logged at CRITICAL as lost, and :meth:`Spool.keep` raises :class:`SpoolFull`. Messages in a
file that this process cannot read any more do not hold later ones back: they are published
once it can.

A message may be published twice (when its process dies between publishing and deleting it,
or cannot delete it from a full disk): its ``event_id`` tells.
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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import IO

from notifier.errors import SpoolFull
from notifier.wire.message import Message, decode

__all__ = ["Spool", "SpoolFile"]

logger = logging.getLogger("notifier")

Publish = Callable[[Message, str], None]

_SCHEMA = "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY, queue TEXT, message TEXT)"
# The top-level packages whose errors say that the broker is down, hung or refusing: logged
# without a traceback. Any other error a publish raises is logged with one.
_BROKER_CLIENTS = frozenset({"redis", "kombu", "amqp", "celery"})


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


class Spool:
    """The spool directory, as one web process uses it.

    :meth:`keep` appends a message to this process's file, or holds it in memory when the file
    cannot take it (at most ``memory_limit`` messages, in order), and wakes the background
    thread, which publishes them, and any file left by a process that is gone, every ``retry``
    seconds until nothing waits.
    """

    def __init__(
        self,
        directory: str | Path,
        publish: Publish,
        retry: float = 1.0,
        name: str = "notifier",
        *,
        memory_limit: int = 10_000,
    ) -> None:
        if memory_limit < 0:
            raise ValueError(f"memory_limit = {memory_limit!r}: 0 or more messages")
        self.directory = Path(directory)
        self.publish = publish
        self.name = name
        self.retry = retry
        self.memory_limit = memory_limit
        self._reset()
        os.register_at_fork(after_in_child=self._after_fork)

    def _reset(self) -> None:
        self._mutex = threading.Lock()  # what keep() changes
        self._flushing = threading.Lock()  # one flush at a time: the thread's, or a caller's
        self._wake = threading.Event()
        self._own: SpoolFile | None = None
        self._own_waiting = 0  # messages in self._own, as last counted
        self._own_unreadable = False  # the last count of self._own failed
        self._memory: deque[tuple[Message, str]] = deque()  # what no file could take, in order
        self._free_waiting = False  # whether files of processes that are gone hold messages
        self._free_published: dict[Path, int] = {}  # their published_through, when not 0
        self._borrowed: set[SpoolFile] = set()  # those a flush holds locked
        self._refusal: Exception | None = None  # what the broker raised in this flush
        self._refusing = ""  # ... and in the previous one, as logged
        self._failures: dict[str, str] = {}  # what failed in the previous flush, as logged
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None

    def _after_fork(self) -> None:
        # A child forked while the thread held the lock would wait for it for ever: each
        # process starts afresh, with a file and a thread of its own. Its copies of the
        # parent's file locks would keep those files locked after the parent is gone.
        for spool_file in (self._own, *self._borrowed):
            if spool_file is not None:
                spool_file.unlock()
        self._reset()

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
        # not read its file on each request for the rest of its life. Messages in a file that
        # cannot be read hold nothing back: they could wait for ever.
        return bool(self._memory) or (self._own_waiting > 0 and not self._own_unreadable)

    def start(self) -> None:
        """Publish, in the background, what processes that are gone left in the directory:
        every ``retry`` seconds until none is left, however long the broker stays down."""
        try:
            free = self._free_files()
            try:
                waiting = sum(len(spool_file) for spool_file in free)
            finally:
                for spool_file in free:
                    spool_file.unlock()
        except (sqlite3.Error, OSError) as exc:  # start-up goes on: the thread tries again
            self._failed(f"counting the messages in {self.directory}", exc)
        else:
            if not waiting:
                return
            logger.info("%d messages left by processes that are gone: publishing them", waiting)
        with self._mutex:
            self._free_waiting = True
            self._wake_thread()

    def keep(self, message: Message, queue: str) -> None:
        """Keep ``message`` for ``queue``, for the background thread to publish: in this
        process's file or, when the file cannot take it, in memory. Raise :class:`SpoolFull`
        when memory is full too, never because of the disk."""
        with self._mutex:
            if self._memory:  # behind what memory holds, not before it
                kept = self._hold(message, queue, f"behind {len(self._memory)} held in memory")
            else:
                try:
                    self._own_file().append(message, queue)
                except (sqlite3.Error, OSError) as exc:
                    kept = self._hold(message, queue, f"the spool cannot write it to disk: {exc}")
                else:
                    kept = True
                    self._own_waiting += 1
            self._wake_thread()
        if not kept:
            raise SpoolFull(f"event {message.task_id} lost: the spool is full")

    def _hold(self, message: Message, queue: str, why: str) -> bool:
        identity = f"event {message.task_id} ({message.action} {message.resource_name}) to {queue}"
        if len(self._memory) >= self.memory_limit:
            logger.critical(
                "lost %s: %s, and %d messages held in memory already, the most it holds",
                identity,
                why,
                len(self._memory),
            )
            return False
        self._memory.append((message, queue))
        logger.critical(
            "kept %s in memory only, lost if this process stops before the broker takes it: %s",
            identity,
            why,
        )
        return True

    def _wake_thread(self) -> None:
        self._wake.set()
        if self._thread is None or not self._thread.is_alive():
            thread = threading.Thread(target=self._run, name="notifier-spool", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: the next keep tries again
                logger.critical("the spool's thread cannot start: %s", exc)
            else:
                self._thread = thread

    def flush(self) -> int:
        """Publish what waits, oldest first: this process's file, what it holds in memory, then
        the files of processes that are gone; stop at the broker's first refusal (what memory
        holds then goes to this process's file, when it can). Log what fails, never raise it.
        Return how many were published."""
        with self._flushing:
            self._refusal = None
            published = self._flush_own()
            if self._refusal is None:
                published += self._flush_memory()
            if self._refusal is None:
                published += self._flush_free()
            if self._memory:
                self._write_memory_to_disk()
            self._report(published)
            return published

    def _flush_own(self) -> int:
        own = self._own
        if own is None:
            return 0
        published, flushed = self._flush_file(own)
        with self._mutex:  # under the lock keep() appends under: the count stays right
            try:
                self._own_waiting = len(own)
            except (sqlite3.Error, OSError) as exc:
                self._own_unreadable = True
                if flushed:  # else already said
                    self._failed(f"reading or updating {own.path.name}", exc)
            else:
                self._own_unreadable = False
        return published

    def _flush_memory(self) -> int:
        published = 0
        while True:
            with self._mutex:
                if not self._memory:
                    return published
                message, queue = self._memory[0]  # only a flush takes from the left
            try:
                self._publish(message, queue)
            except Exception:
                return published
            with self._mutex:
                self._memory.popleft()
            published += 1

    def _flush_free(self) -> int:
        try:
            free = self._free_files()
        except OSError as exc:
            self._failed(f"listing {self.directory}", exc)
            self._free_waiting = True
            return 0
        published = 0
        waiting = False
        for spool_file in free:
            self._borrowed.add(spool_file)
            try:
                if self._refusal is None:
                    count, flushed = self._flush_file(spool_file)
                    published += count
                    waiting = waiting or not flushed  # a file that fails may hold messages
                waiting = waiting or self._refusal is not None
            finally:
                spool_file.unlock()
                self._borrowed.discard(spool_file)
            if spool_file.published_through:
                self._free_published[spool_file.path] = spool_file.published_through
            else:
                self._free_published.pop(spool_file.path, None)
        self._free_waiting = waiting
        return published

    def _flush_file(self, spool_file: SpoolFile) -> tuple[int, bool]:
        """How many messages of ``spool_file`` were published, and whether it was read to
        its end (or to the broker's refusal) without an error."""
        published = 0

        def publish(message: Message, queue: str) -> None:
            nonlocal published
            self._publish(message, queue)
            published += 1

        what = f"reading or updating {spool_file.path.name}"
        try:
            spool_file.flush(publish)
        except Exception as exc:  # whatever one file raises, the round goes on without it
            self._failed(what, exc)
            return published, False
        self._works_again(what)
        return published, True

    def _publish(self, message: Message, queue: str) -> None:
        try:
            self.publish(message, queue)
        except Exception as exc:
            self._refusal = exc
            raise

    def _write_memory_to_disk(self) -> None:
        # Memory is lost with the process; a file is not. In one transaction, under the lock:
        # a message kept meanwhile goes behind them.
        what = "writing the messages held in memory to disk"
        with self._mutex:
            try:
                own = self._own_file()
                own.append_all(self._memory)
            except (sqlite3.Error, OSError) as exc:
                self._failed(what, exc)
                return
            moved = len(self._memory)
            self._memory.clear()
            self._own_waiting += moved
        self._works_again(what)
        logger.warning("wrote the %d messages held in memory to %s", moved, own.path.name)

    def _waiting(self) -> bool:
        return self._own_waiting > 0 or bool(self._memory) or self._free_waiting

    def _report(self, published: int) -> None:
        refusal, self._refusal = self._refusal, None
        waiting = self._own_waiting + len(self._memory)
        if refusal is not None:
            refused = f"{type(refusal).__name__}: {refusal}"
            if refused == self._refusing:
                logger.info("the broker still does not take messages (%s)", refused)
            else:
                expected = isinstance(refusal, OSError) or (
                    type(refusal).__module__.partition(".")[0] in _BROKER_CLIENTS
                )
                logger.warning(
                    "the broker does not take messages (%s); the spool tries again every %g s "
                    "(%d messages of this process wait)",
                    refused,
                    self.retry,
                    waiting,
                    exc_info=None if expected else refusal,
                )
            self._refusing = refused
            return
        self._refusing = ""
        if published and self._waiting():
            logger.info(
                "published %d spooled messages; %d of this process wait", published, waiting
            )
        elif published:
            logger.warning("published %d spooled messages; spool empty", published)

    def _failed(self, what: str, exc: Exception) -> None:
        failure = f"{type(exc).__name__}: {exc}"
        if self._failures.get(what) == failure:
            logger.info("spool: %s still fails (%s)", what, failure)
            return
        self._failures[what] = failure
        logger.error(
            "spool: %s failed (%s); tried again every %g s",
            what,
            failure,
            self.retry,
            exc_info=exc,
        )

    def _works_again(self, what: str) -> None:
        if self._failures.pop(what, None) is not None:
            logger.warning("spool: %s works again", what)

    def files(self) -> list[SpoolFile]:
        """The files no living process holds (older: first), then this process's own."""
        found = self._free_files()
        if self._own is not None:
            found.append(self._own)
        return found

    def _free_files(self) -> list[SpoolFile]:
        # Each returned file is locked for this process until flush() unlocks it; each knows
        # what this process published from it already (and could not delete).
        found: list[SpoolFile] = []
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob(f"spool-{self.name}-*.sqlite3")):
            if self._own is not None and path == self._own.path:
                continue
            candidate = SpoolFile(path, self._free_published.get(path, 0))
            if candidate.lock():
                found.append(candidate)
        return found

    def _run(self) -> None:
        while True:
            self._wake.wait()  # until something waits
            time.sleep(self.retry)  # give the broker a moment
            try:
                self.flush()
            except Exception:  # the thread must not stop: the next round comes
                logger.exception("the spool's thread failed; trying again in %g s", self.retry)
            with self._mutex:  # under the lock keep() wakes the thread under
                if not self._waiting():
                    self._wake.clear()


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
