"""The spool of one web process: messages the broker did not take, spooled until it does.

Each web process appends to a spool file of its own (:class:`~notifier.spool.file.SpoolFile`)
in the spool directory, the name of which is the publisher's (``notifier``, or a configured
forwarder's). While the process holds messages, new ones are spooled behind them, so that
they reach the broker in their original order.

A background thread publishes them again every ``retry`` seconds while anything waits,
however long the broker stays down: this process's file first, oldest first, then what it
holds in memory (:mod:`notifier.spool.memory`), then the files of processes that are gone (no
longer locked; a starting process publishes them, :meth:`Spool.start`, and so does
``notifier-spool flush``). Nothing stops it: an error is logged (:mod:`notifier.spool.log`)
and the next round comes; a message leaves its file only once the broker took it. Messages in
a file that this process cannot read any more do not hold later ones back: they are published
once it can.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from notifier.errors import SpoolFull
from notifier.spool.file import Publish, SpoolFile
from notifier.spool.log import SpoolLog
from notifier.spool.memory import MemoryQueue
from notifier.wire.message import Message

__all__ = ["Spool"]

logger = logging.getLogger("notifier")


class Spool:
    """The spool directory, as one web process uses it.

    :meth:`write` appends a message to this process's file, or holds it in memory when the file
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
        self._mutex = threading.Lock()  # what write() changes
        self._flushing = threading.Lock()  # one flush at a time: the thread's, or a caller's
        self._wake = threading.Event()
        self._own: SpoolFile | None = None
        self._own_waiting = 0  # messages in self._own, as last counted
        self._own_unreadable = False  # the last count of self._own failed
        self._memory = MemoryQueue(self.memory_limit)  # what no file could take, in order
        self._free_waiting = False  # whether files of processes that are gone hold messages
        self._free_published: dict[Path, int] = {}  # their published_through, when not 0
        self._borrowed: set[SpoolFile] = set()  # those a flush holds locked
        self._refusal: Exception | None = None  # what the broker raised in this flush
        self._log = SpoolLog(self.retry)
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
            self._log.failed(f"counting the messages in {self.directory}", exc)
        else:
            if not waiting:
                return
            logger.info("%d messages left by processes that are gone: publishing them", waiting)
        with self._mutex:
            self._free_waiting = True
            self._wake_thread()

    def write(self, message: Message, queue: str) -> None:
        """Spool ``message`` for ``queue``, for the background thread to publish: in this
        process's file or, when the file cannot take it, in memory. Raise :class:`SpoolFull`
        when memory is full too, never because of the disk."""
        memory = self._memory
        with self._mutex:
            if memory:  # behind what memory holds, not before it
                spooled = memory.hold(message, queue, f"behind {len(memory)} held in memory")
            else:
                try:
                    self._own_file().append(message, queue)
                except (sqlite3.Error, OSError) as exc:
                    why = f"the spool cannot write it to disk: {exc}"
                    spooled = memory.hold(message, queue, why)
                else:
                    spooled = True
                    self._own_waiting += 1
            self._wake_thread()
        if not spooled:
            raise SpoolFull(f"event {message.task_id} lost: the spool is full")

    def _wake_thread(self) -> None:
        self._wake.set()
        if self._thread is None or not self._thread.is_alive():
            thread = threading.Thread(target=self._run, name="notifier-spool", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: the next write tries again
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
            refusal, self._refusal = self._refusal, None
            waiting = self._own_waiting + len(self._memory)
            self._log.flushed(published, refusal, waiting, more=self._waiting())
            return published

    def _flush_own(self) -> int:
        own = self._own
        if own is None:
            return 0
        published, flushed = self._flush_file(own)
        with self._mutex:  # under the lock write() appends under: the count stays right
            try:
                self._own_waiting = len(own)
            except (sqlite3.Error, OSError) as exc:
                self._own_unreadable = True
                if flushed:  # else already said
                    self._log.failed(f"reading or updating {own.path.name}", exc)
            else:
                self._own_unreadable = False
        return published

    def _flush_memory(self) -> int:
        published = 0
        while True:
            with self._mutex:
                if not self._memory:
                    return published
                message, queue = self._memory.first()
            try:
                self._publish(message, queue)
            except Exception:
                return published
            with self._mutex:
                self._memory.drop_first()
            published += 1

    def _flush_free(self) -> int:
        try:
            free = self._free_files()
        except OSError as exc:
            self._log.failed(f"listing {self.directory}", exc)
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
            self._log.failed(what, exc)
            return published, False
        self._log.works_again(what)
        return published, True

    def _publish(self, message: Message, queue: str) -> None:
        try:
            self.publish(message, queue)
        except Exception as exc:
            self._refusal = exc
            raise

    def _write_memory_to_disk(self) -> None:
        # Memory is lost with the process; a file is not. In one transaction, under the lock:
        # a message spooled meanwhile goes behind them.
        what = "writing the messages held in memory to disk"
        with self._mutex:
            try:
                own = self._own_file()
                own.append_all(self._memory)
            except (sqlite3.Error, OSError) as exc:
                self._log.failed(what, exc)
                return
            moved = len(self._memory)
            self._memory.clear()
            self._own_waiting += moved
        self._log.works_again(what)
        logger.warning("wrote the %d messages held in memory to %s", moved, own.path.name)

    def _waiting(self) -> bool:
        return self._own_waiting > 0 or bool(self._memory) or self._free_waiting

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
            with self._mutex:  # under the lock write() wakes the thread under
                if not self._waiting():
                    self._wake.clear()
