"""The transactional outbox: messages that commit, or roll back, with the changes they describe.

For hosts whose data lives in a SQL database (Kinto on PostgreSQL, a Pyramid app with
SQLAlchemy and ``zope.sqlalchemy``), the messages of a transaction are written to the table
``notifier_outbox`` in that very transaction (:meth:`Outbox.write`). Once it committed they are
handed to the process's background thread (:meth:`Outbox.submit`), which publishes them at
once, in commit order, and deletes their rows: the request waits for neither the broker nor
the delete. A row stays when its process died before publishing it, or when the broker did not
take it: the relay publishes it.

The relay (:meth:`Outbox.relay`: a thread of each web process, or ``notifier-outbox relay``)
takes, oldest first, the rows this process could not publish and every row older than
``relay_after`` seconds (left by a process that died or is stuck), publishes them and deletes
them in one transaction. On PostgreSQL the rows are locked with ``FOR UPDATE SKIP LOCKED``, so
that relays of several processes never publish one row at the same time; on SQLite the relay
takes the database's write lock (``BEGIN IMMEDIATE``).

A message is published twice when its process dies between publishing it and deleting its row,
or when a relay takes a row whose own process is slower than ``relay_after`` to publish it: its
``event_id`` tells. The table is created by ``notifier-outbox create``, never by a request.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from notifier.errors import ConfigurationError, OutboxError
from notifier.settings import OutboxSettings
from notifier.wire.message import Message, decode

__all__ = ["TABLE", "Outbox", "create_table", "engine_for", "outbox_for", "table_exists"]

logger = logging.getLogger("notifier")

Publish = Callable[[Message, str], None]
#: Messages submitted and not yet published, at most: past it, the relay takes them.
PENDING_LIMIT = 10_000
#: How a request's session is found: a context manager giving the session of its transaction.
SessionOf = Callable[[Any], contextlib.AbstractContextManager[Any]]

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
_INSERT = sa.text(
    f"INSERT INTO {TABLE} (task_id, queue, message, created) "
    "VALUES (:task_id, :queue, :message, :created)"
)
_DELETE = sa.text(f"DELETE FROM {TABLE} WHERE task_id IN :task_ids").bindparams(
    sa.bindparam("task_ids", expanding=True, type_=sa.Text)
)
_EXISTING = sa.text(f"SELECT task_id FROM {TABLE} WHERE task_id IN :task_ids").bindparams(
    sa.bindparam("task_ids", expanding=True, type_=sa.Text)
)
_DUE = (
    f"SELECT id, task_id, queue, message FROM {TABLE} "
    "WHERE id > :after AND (created < :cutoff OR task_id IN :failed) ORDER BY id LIMIT :limit"
)
_CLAIM = {
    name: sa.text(sql).bindparams(sa.bindparam("failed", expanding=True, type_=sa.Text))
    for name, sql in [("postgresql", f"{_DUE} FOR UPDATE SKIP LOCKED"), ("sqlite", _DUE)]
}


def _dialect(engine: Engine, key: str, url: str) -> str:
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
            connection.exec_driver_sql(_SCHEMAS[_dialect(engine, "--url", url)])
    finally:
        engine.dispose()


def table_exists(engine: Engine) -> bool:
    """Whether the outbox table is in ``engine``'s database."""
    return sa.inspect(engine).has_table(TABLE)


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
    ) -> None:
        self.engine = engine
        self.dialect = _dialect(engine, "outbox_url", engine.url.render_as_string())
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
        self._pending: collections.deque[tuple[Message, str]] = collections.deque()
        self._published: list[str] = []  # rows published, to delete
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
        created = time.time()
        rows = [
            {
                "task_id": message.task_id,
                "queue": queue,
                "message": json.dumps(message.as_dict()),
                "created": created,
            }
            for message, queue in outgoing
        ]
        with self.session_of(request) as session:
            # The application's own pending changes first, so that their errors stay theirs.
            session.flush()
            self._insert(session, rows)

    @staticmethod
    def _insert(session: Any, rows: list[dict[str, Any]]) -> None:
        try:
            session.execute(_INSERT, rows)
        except OutboxError:
            raise
        except Exception as exc:
            raise OutboxError(
                f"could not write {len(rows)} messages to the outbox ({exc}): the transaction "
                "must not commit without them"
            ) from exc

    # -- after the commit ----------------------------------------------------------------------

    def submit(self, outgoing: list[tuple[Message, str]]) -> None:
        """Committed messages (message, queue): the background thread publishes them at once,
        in commit order, and deletes their rows. The request does not wait for the broker:
        the rows are safe in the table."""
        with self._mutex:
            if len(self._pending) + len(outgoing) <= PENDING_LIMIT:
                self._pending.extend(outgoing)
            else:  # the broker is far behind: the relay takes them from the table, in order
                self._failed.update(dict.fromkeys(message.task_id for message, _ in outgoing))
            self._wake.set()
        self._ensure_thread()

    def publish_pending(self) -> int:
        """Publish what was submitted, oldest first; what the broker does not take (and what
        comes after it) stays in the table for the relay. Return how many were published."""
        published = 0
        while True:
            with self._mutex:
                if not self._pending:
                    return published
                message, queue = self._pending.popleft()
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
            with self._mutex:
                self._published.append(message.task_id)
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
        self._delete_published()
        if everything:
            cutoff = float("inf")
        elif self.relay_others:
            cutoff = time.time() - self.relay_after
        else:
            cutoff = 0.0  # no row is that old: only this process's failed ones
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
        with self._claiming() as connection:
            rows = connection.execute(
                _CLAIM[self.dialect],
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
                connection.execute(_DELETE, {"task_ids": published})
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

    @contextlib.contextmanager
    def _claiming(self) -> Iterator[Connection]:
        if self.dialect == "postgresql":
            with self.engine.begin() as connection:
                yield connection
            return
        # SQLite: the write lock from the start, so that two relays never take the same rows.
        with self.engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")

    def _delete_published(self) -> None:
        with self._mutex:
            done, self._published = self._published, []
        for start in range(0, len(done), 500):
            chunk = done[start : start + 500]
            try:
                with self.engine.begin() as connection:
                    connection.execute(_DELETE, {"task_ids": chunk})
            except Exception:
                with self._mutex:  # tried again next time; meanwhile the rows are young
                    self._published[:0] = done[start:]
                raise

    def _forget_gone(self) -> None:
        # Rows that another relay published (and deleted) are no longer this process's to wait
        # for.
        with self._mutex:
            failed = list(self._failed)[: self.batch * 10]
        with self.engine.connect() as connection:
            there = {row[0] for row in connection.execute(_EXISTING, {"task_ids": failed})}
        with self._mutex:
            for task_id in failed:
                if task_id not in there:
                    self._failed.pop(task_id, None)

    def waiting(self, older_than: float = 0.0) -> tuple[int, float | None]:
        """How many rows the table holds (older than ``older_than`` seconds), and the age in
        seconds of the oldest."""
        with self.engine.connect() as connection:
            count, oldest = connection.execute(
                sa.text(f"SELECT count(*), min(created) FROM {TABLE} WHERE created <= :cutoff"),
                {"cutoff": time.time() - older_than},
            ).one()
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
            self._wake.wait(min(self.retry, 0.25))
            self._wake.clear()
            try:
                self.publish_pending()
                self._delete_published()
                if time.monotonic() >= next_relay:
                    next_relay = time.monotonic() + self.retry
                    published = self.relay()
                    if published:
                        logger.warning("outbox: published %d messages it held", published)
                if trouble:
                    logger.warning("outbox: the database answers again")
                    trouble = False
            except Exception as exc:  # the thread never dies: next round, again
                if not trouble:
                    logger.warning("outbox: the relay failed (%s); trying again", exc)
                trouble = True


def _identity(message: Message, queue: str) -> str:
    part = f", part {message.part + 1} of {message.parts}" if message.parts > 1 else ""
    return (
        f"event {message.event_id} ({message.action} {message.resource_name} "
        f"{message.payload.get('uri')}, {len(message.impacted_records)} records) to queue "
        f"{queue}{part}"
    )


def outbox_for(config: Any, settings: OutboxSettings, publish: Publish) -> Outbox:
    """The outbox of an application configured by ``config`` (Pyramid's), with its relay
    thread started unless ``settings.relay`` is false. Fail with
    :class:`~notifier.errors.ConfigurationError` when the host cannot have one, or when its
    table is not there."""
    host = config.get_settings()
    if host.get("settings_prefix") == "kinto":
        session_of = _kinto_session_of(host, settings)
    else:
        session_of = _pyramid_session_of(config, settings)
    engine = engine_for(settings.url, **_pool_options(settings.url))
    dialect = _dialect(engine, settings.url_key, settings.url)
    try:
        there = table_exists(engine)
    except sa.exc.SQLAlchemyError as exc:
        # The database may be down for now: the relay tries again; writes would fail anyway.
        logger.warning("outbox: could not look for the %s table (%s)", TABLE, exc)
        there = True
    if not there:
        raise ConfigurationError(
            settings.url_key,
            settings.url,
            f"a {dialect} database with the {TABLE} table: create it with "
            f"`notifier-outbox create --url {settings.url}`",
        )
    outbox = Outbox(
        engine,
        publish,
        session_of,
        relay_after=settings.relay_after,
        relay_others=settings.relay,
    )
    outbox.start()  # with relay_others, also publishes what processes that are gone left
    return outbox


def _pool_options(url: str) -> dict[str, Any]:
    # The relay thread needs one connection at a time.
    return {"pool_size": 1, "max_overflow": 1} if url.startswith("postgresql") else {}


def _kinto_session_of(host: Any, settings: OutboxSettings) -> SessionOf:
    backend = str(host.get("storage_backend", ""))
    if not backend.endswith(".postgresql"):
        raise ConfigurationError(
            "kinto.storage_backend",
            backend,
            "kinto.core.storage.postgresql, for the outbox: its rows commit in Kinto's own "
            "PostgreSQL transaction",
        )
    if str(host.get("transaction_per_request", True)).lower() in ("false", "no", "off", "0"):
        raise ConfigurationError(
            "kinto.transaction_per_request",
            host["transaction_per_request"],
            "true, for the outbox: its rows commit in the request's transaction",
        )

    @contextlib.contextmanager
    def session_of(request: Any) -> Iterator[Any]:
        # Kinto's storage client (kinto.core.storage.postgresql.client.PostgreSQLClient,
        # checked on Kinto 26.5): connect() gives the request's session, joined to its
        # transaction by zope.sqlalchemy, and marks it as changed.
        with request.registry.storage.client.connect() as session:
            yield session

    return session_of


def _pyramid_session_of(config: Any, settings: OutboxSettings) -> SessionOf:
    if "." in settings.session or ":" in settings.session:
        try:
            find = config.maybe_dotted(settings.session)
        except ImportError as exc:
            raise ConfigurationError(
                settings.session_key, settings.session, f"a function of the request: {exc}"
            ) from None
    else:
        name = settings.session

        def find(request: Any) -> Any:
            return getattr(request, name)

    import zope.sqlalchemy

    @contextlib.contextmanager
    def session_of(request: Any) -> Iterator[Any]:
        session = find(request)
        yield session
        # Rows written with SQL alone: tell zope.sqlalchemy that the session has work to commit.
        zope.sqlalchemy.mark_changed(session)

    return session_of


def main(argv: list[str] | None = None) -> int:
    """``notifier-outbox``: create the table, see what it holds, run a standalone relay."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="notifier-outbox",
        description="The transactional outbox: messages committed with the data.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("create", "create the outbox table (nothing if it is there)"),
        ("status", "how many messages the outbox holds, and the oldest one's age"),
        ("relay", "publish what web processes left in the outbox, as their relay threads do"),
    ]:
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--url", required=True, help="the database, e.g. postgresql://user@host/kinto"
        )
    relaying = commands.choices["relay"]
    relaying.add_argument(
        "--broker-url",
        default=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
        help="default: $CELERY_BROKER_URL, else redis://localhost:6379/0",
    )
    relaying.add_argument(
        "--relay-after",
        type=float,
        default=10.0,
        help="seconds after which a message its process did not publish is relayed (10)",
    )
    relaying.add_argument("--timeout", type=float, default=5.0, help="seconds per broker call")
    relaying.add_argument("--once", action="store_true", help="one pass, then exit")
    arguments = parser.parse_args(argv)

    if arguments.command == "create":
        try:
            create_table(arguments.url)
        except ConfigurationError as exc:
            parser.exit(2, f"notifier-outbox: {exc}\n")
        print(f"{TABLE}: ready in {sa.make_url(arguments.url).render_as_string()}")
        return 0
    engine = engine_for(arguments.url)
    if not table_exists(engine):
        parser.exit(2, f"notifier-outbox: no {TABLE} table there: run notifier-outbox create\n")
    if arguments.command == "status":
        outbox = Outbox(engine, _refuse)
        count, oldest = outbox.waiting()
        age = "" if oldest is None else f", the oldest {oldest:.1f} s old"
        print(f"{count} messages in {TABLE}{age}")
        return 0

    from notifier.publisher import CeleryPublisher

    publisher = CeleryPublisher(arguments.broker_url, arguments.timeout)
    outbox = Outbox(engine, publisher.publish, relay_after=arguments.relay_after)
    try:
        while True:
            published = outbox.relay()
            if published:
                print(f"published {published} messages", flush=True)
            if arguments.once:
                due, _ = outbox.waiting(older_than=arguments.relay_after)
                print(f"{due} messages older than {arguments.relay_after:g} s left in {TABLE}")
                return 0 if due == 0 else 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        publisher.close()
        engine.dispose()


def _refuse(message: Message, queue: str) -> None:
    raise RuntimeError("this outbox only reads")


if __name__ == "__main__":
    raise SystemExit(main())
