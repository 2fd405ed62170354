"""The outbox of one process: what it publishes after each commit, and its relay.

Once a transaction committed, its messages are handed to the process's background thread
(:meth:`Outbox.submit`), which publishes them at once, in commit order, and deletes their rows
a few at a time (:mod:`notifier.outbox.deleting`): the request waits for neither the broker
nor the delete. A row stays when its process died before publishing it, or when the broker
did not take it: the relay publishes it.

The relay (:meth:`Outbox.relay`: a pass of that thread, or of ``notifier-outbox relay``)
takes, oldest first, the rows this process could not publish and every row older than
``relay_after`` seconds (left by a process that died or is stuck), publishes them and deletes
them in one transaction. On PostgreSQL the rows are locked with ``FOR UPDATE SKIP LOCKED``, so
that relays of several processes never publish one row at the same time; on SQLite the relay
takes the database's write lock (``BEGIN IMMEDIATE``); either only once a plain read found a
due row.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from notifier.errors import OutboxError
from notifier.metrics import WebMetrics, web_metrics
from notifier.outbox.deleting import DELETE_EVERY, Published
from notifier.outbox.locking import transaction
from notifier.outbox.table import ANY_DUE, CLAIM, DELETE, EXISTING, TABLE, WAITING, dialect_of
from notifier.outbox.writing import SessionOf, write_rows
from notifier.wire.message import Message, decode

__all__ = ["PENDING_LIMIT", "Outbox", "Publish"]

logger = logging.getLogger("notifier")

Publish = Callable[[Message, str], None]
#: Messages submitted and not yet published, at most: past it, the relay takes them.
PENDING_LIMIT = 10_000


class Outbox:
    """The outbox table, as one web process (or one standalone relay) uses it.

    ``session_of(request)`` gives the session of the request's transaction, into which
    :meth:`write` adds the rows. ``engine`` is the relay's own way into the database.
    """

    def __init__(
        self,
        engine: Engine,
        publish: Publish,
        session_of: SessionOf | None = None,
        *,
        relay_after: float = 10.0,
        relay_others: bool = True,
        retry: float = 1.0,
        batch: int = 100,
        metrics: WebMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics if metrics is not None else web_metrics()
        self.dialect = dialect_of(engine, "outbox_url", engine.url.render_as_string())
        self.publish = publish
        self.session_of = session_of
        self.relay_after = relay_after
        # False: the thread deletes what was published and publishes again what this process's
        # broker refused, but leaves the rows of other processes to a standalone relay.
        self.relay_others = relay_others
        self.retry = retry
        self.batch = batch
        self._reset()
        # A child forked while the thread held the lock would wait for it for ever; the pool's
        # connections belong to the parent.
        os.register_at_fork(after_in_child=self._reset_in_child)

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        # Messages submitted, with when (time.monotonic()): their rows' deadline to be deleted.
        self._pending: collections.deque[tuple[Message, str, float]] = collections.deque()
        self._published = Published(self.engine, self.dialect, self.relay_after)
        self._failed: dict[str, None] = {}  # rows this process could not publish, oldest first
        self._unreadable: set[str] = set()  # rows that are not messages, logged once
        self._thread: threading.Thread | None = None
        self._stopped = False

    def _reset_in_child(self) -> None:
        self._reset()
        self.engine.dispose(close=False)

    # -- inside the request's transaction ------------------------------------------------------

    def write(self, request: Any, outgoing: list[tuple[Message, str]]) -> None:
        """Add the rows of ``outgoing`` (message, queue) to the transaction of ``request``."""
        if self.session_of is None:
            raise OutboxError("this outbox has no way to a request's session")
        write_rows(self.session_of, request, outgoing)

    # -- after the commit ----------------------------------------------------------------------

    def submit(self, outgoing: list[tuple[Message, str]]) -> None:
        """Committed messages (message, queue): the background thread publishes them at once,
        in commit order, and deletes their rows. The request does not wait for the broker:
        the rows are safe in the table."""
        submitted = time.monotonic()
        with self._mutex:
            if len(self._pending) + len(outgoing) <= PENDING_LIMIT:
                self._pending.extend((message, queue, submitted) for message, queue in outgoing)
            else:  # the broker is far behind: the relay takes them from the table, in order
                self._failed.update(dict.fromkeys(message.task_id for message, _ in outgoing))
            self._wake.set()
            self.metrics.outbox_holds(len(self._pending) + len(self._failed))
        self._ensure_thread()

    def publish_pending(self) -> int:
        """Publish what was submitted, oldest first; what the broker does not take (and what
        comes after it) stays in the table for the relay. Return how many were published."""
        published = 0
        while True:
            with self._mutex:
                if not self._pending:
                    return published
                message, queue, submitted = self._pending.popleft()
                if self._failed:  # behind rows the broker refused: the relay keeps the order
                    self._failed[message.task_id] = None
                    continue
            try:
                self.publish(message, queue)
            except Exception as exc:
                # Expected trouble: one line, no traceback; the row waits in the table.
                logger.warning(
                    "could not publish %s (%s): left in the outbox, its relay publishes it",
                    _identity(message, queue),
                    exc,
                )
                with self._mutex:
                    self._failed[message.task_id] = None
                continue
            self._published.add(message.task_id, submitted)
            published += 1

    def holds_messages(self) -> bool:
        """Whether messages of this process wait: submitted, or refused by the broker."""
        return bool(self._pending or self._failed)

    # -- the relay -----------------------------------------------------------------------------

    def relay(self, *, everything: bool = False) -> int:
        """Publish, oldest first, this process's failed rows and (with ``relay_others``) the
        rows older than ``relay_after``, or all rows with ``everything``; stop at the first the
        broker refuses. Return how many were published (submitted messages included)."""
        published = self.publish_pending()
        self._published.delete()
        return published + self._relay_due(self._cutoff(everything))

    def _cutoff(self, everything: bool = False) -> float:
        if everything:
            return float("inf")
        if self.relay_others:
            return time.time() - self.relay_after
        return 0.0  # no row is that old: only this process's failed ones

    def _relay_due(self, cutoff: float) -> int:
        """The relay's batches: the rows it claimed and published, however many they are."""
        published = 0
        after: int | None = -1
        while after is not None:
            with self._mutex:
                failed = list(self._failed)[: self.batch]
            if cutoff == 0.0 and not failed:
                break
            done, after = self._relay_batch(cutoff, failed, after)
            published += done
        if self._failed:
            self._forget_gone()
        return published

    def _relay_batch(self, cutoff: float, failed: list[str], after: int) -> tuple[int, int | None]:
        """One transaction: claim a batch of the due rows after the id ``after``, publish
        them, delete what was published. Return how many were published, and the id to go on
        after (None: nothing more this round)."""
        if not self._any_due(cutoff, failed, after):
            return 0, None
        with transaction(self.engine, self.dialect) as connection:
            rows = connection.execute(
                CLAIM[self.dialect],
                {"cutoff": cutoff, "failed": failed, "after": after, "limit": self.batch},
            ).all()
            published: list[str] = []
            refused = False
            for _, task_id, queue, text in rows:
                try:
                    message = decode(json.loads(text))
                except ValueError as exc:
                    self._left_unreadable(task_id, exc)
                    continue
                try:
                    self.publish(message, queue)
                except Exception as exc:  # the broker still fails: the rest waits
                    logger.warning("outbox: the broker did not take %s (%s)", task_id, exc)
                    refused = True
                    break
                published.append(task_id)
            if published:
                connection.execute(DELETE, {"task_ids": published})
        with self._mutex:
            for task_id in published:
                self._failed.pop(task_id, None)
        if refused or len(rows) < self.batch:
            return len(published), None
        return len(published), rows[-1][0]

    def _left_unreadable(self, task_id: str, exc: Exception) -> None:
        # Kept where it is, for a person to see; said once per process, not every round.
        with self._mutex:
            self._failed.pop(task_id, None)
            if task_id in self._unreadable:
                return
            self._unreadable.add(task_id)
        logger.critical("outbox row %s is not a message (%s): left in %s", task_id, exc, TABLE)

    def _any_due(self, cutoff: float, failed: list[str], after: int) -> bool:
        # A plain read: most passes find nothing, and on SQLite the claim's write lock would
        # make the app's requests wait for nothing.
        with self.engine.connect() as connection:
            parameters = {"cutoff": cutoff, "failed": failed, "after": after}
            return connection.execute(ANY_DUE, parameters).first() is not None

    def _forget_gone(self) -> None:
        # Rows that another relay published (and deleted) are no longer this process's to wait
        # for.
        with self._mutex:
            failed = list(self._failed)[: self.batch * 10]
        with self.engine.connect() as connection:
            there = {row[0] for row in connection.execute(EXISTING, {"task_ids": failed})}
        with self._mutex:
            for task_id in failed:
                if task_id not in there:
                    self._failed.pop(task_id, None)

    def waiting(self, older_than: float = 0.0) -> tuple[int, float | None]:
        """How many rows the table holds (older than ``older_than`` seconds), and the age in
        seconds of the oldest."""
        with self.engine.connect() as connection:
            count, oldest = connection.execute(WAITING, {"cutoff": time.time() - older_than}).one()
        return int(count), None if oldest is None else max(0.0, time.time() - float(oldest))

    def start(self) -> None:
        """Run the relay in a background thread of this process (once; again in a forked
        child, at its first message)."""
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._mutex:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="notifier-outbox", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _run(self) -> None:
        trouble = False
        next_relay = 0.0
        while not self._stopped:
            self._wake.wait(min(self.retry, DELETE_EVERY))
            self._wake.clear()
            try:
                self.publish_pending()
                self._published.delete_when_due()
                if time.monotonic() >= next_relay:
                    next_relay = time.monotonic() + self.retry
                    # Only what the relay claimed: what was submitted is no news.
                    held = self._relay_due(self._cutoff())
                    if held:
                        logger.warning("outbox: published %d messages it held", held)
                self.metrics.outbox_holds(len(self._pending) + len(self._failed))
                if trouble:
                    logger.warning("outbox: the database answers again")
                    trouble = False
            except Exception as exc:  # the thread never dies: next round, again
                if not trouble:
                    logger.warning("outbox: the relay failed (%s); trying again", exc)
                trouble = True
        self._delete_on_stop()

    def _delete_on_stop(self) -> None:
        # What is left would be published again by a relay, after relay_after.
        try:
            self._published.delete()
        except Exception as exc:
            logger.warning("outbox: could not delete the rows it published (%s)", exc)


def _identity(message: Message, queue: str) -> str:
    part = f", part {message.part + 1} of {message.parts}" if message.parts > 1 else ""
    return (
        f"event {message.event_id} ({message.action} {message.resource_name} "
        f"{message.payload.get('uri')}, {len(message.impacted_records)} records) to queue "
        f"{queue}{part}"
    )
