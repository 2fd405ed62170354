"""Taking more dispatch messages: one dispatch task handles the messages queued behind its own.

Every Celery task costs a worker the same whatever it does (about 1.3 ms: Redis round trips,
Celery's request, the pool; see bench/README.md). So the dispatch task, once it
handled its own message, takes the next ``notifier.dispatch`` messages of its queue and handles
them too: one task for several events.

Taking is kombu's Redis transport's own delivery, done by one Lua script per round
(``take_dispatches.lua``, beside this module): for each message it pops the oldest item of the
queue's list (kombu LPUSHes and BRPOPs), and registers it as unacknowledged exactly as kombu's
``QoS.append`` does for a message it delivers: ``[message, exchange, routing_key]`` in the
``unacked`` hash under the message's delivery tag, and the tag in the ``unacked_index`` sorted
set, scored by the time it was taken.
A worker that dies holding taken messages loses none that kombu can read: its sweep hands them
out again once they are older than the visibility timeout, as it does with the messages it
delivered itself. While this process lives, a thread refreshes their time (as
tasks/broker/visibility.py does for the messages Celery holds), and each is acknowledged (removed
from both) once it was fully handled.

The script takes only what Celery would hand to the dispatch task at once: a kombu envelope of
a ``notifier.dispatch`` task message, JSON, with an ASCII delivery tag, without
``eta``/``countdown`` or an expiry. The first other item it meets goes back where it was
(RPUSH: it stays next), and the round stops, so that a worker's BRPOP takes it as usual. Only
the list of priority 0 (kombu's plain queue key, which BRPOP reads first) is read.

Redis's Lua JSON reads more than Python's (hex numbers, nan, infinity), and kombu's sweep stops
at the first entry of the unacknowledged hash it cannot read, leaving all behind it there for
good. So the taker holds what the script took first, then reads each item as kombu would
(tasks/broker/taken.py): one it cannot read is :class:`Taken` with a ``problem``, which dispatch
dead-letters and acknowledges before it handles anything else. A worker killed between the
script and that acknowledgement (a few Redis round trips) leaves such an item in the hash: the
workers' sweep sets it aside and goes on (``tasks.broker.consuming.AtomicQoS``).

Relied on, checked on kombu 5.7.0 (``kombu/transport/redis.py``): the layout above, which kombu
reads back (its ack, its sweep ``restore_visible``), with the key names of the ``unacked_key``
and ``unacked_index_key`` transport options and the ``global_keyprefix``; the queue's list of
priority 0 named after the queue; kombu's envelope (``properties.delivery_tag`` and
``delivery_info``). On other versions (:func:`tasks.broker.internals_checked`) there is no
taker: dispatch takes no more than its own message.

Beside the other internals notifier relies on: docs/internals.md,
"One dispatch task takes more messages".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from functools import cache
from typing import Any

import redis
from celery import Celery

from notifier.wire.message import DISPATCH_TASK
from notifier.wire.protocol import direct_redis_url, published, signalled, task_message
from tasks.broker.lua import lua_script
from tasks.broker.taken import Taken
from tasks.broker.versions import internals_checked

__all__ = ["Taken", "Taker", "taker_of"]

logger = logging.getLogger("notifier")

# The script that takes (take_dispatches.lua, beside this module: its KEYS, ARGV and reply).
_TAKE_SCRIPT = "take_dispatches.lua"


class Taker:
    """Takes dispatch messages from the broker's queues, and acknowledges them."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        visibility_timeout: float,
        key_prefix: str = "",
        unacked_key: str = "unacked",
        unacked_index_key: str = "unacked_index",
    ) -> None:
        self.client = client
        self.visibility_timeout = visibility_timeout
        self.key_prefix = key_prefix
        self.unacked_key = key_prefix + unacked_key
        self.unacked_index_key = key_prefix + unacked_index_key
        self._take = client.register_script(lua_script(_TAKE_SCRIPT))
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        self._refresher_pid = 0

    def take(self, queue: str, count: int, max_bytes: int) -> list[Taken]:
        """Take up to ``count`` dispatch messages (about ``max_bytes`` at most) from ``queue``,
        oldest first, registered as unacknowledged and held (refreshed) until :meth:`ack`.
        Those that cannot be read have a ``problem``: acknowledge them at once."""
        if count <= 0:
            return []
        reply = self._take(
            keys=[self.key_prefix + queue, self.unacked_key, self.unacked_index_key],
            args=[count, max_bytes, time.time(), DISPATCH_TASK],
        )
        # The script takes ASCII tags only.
        tags = [tag.decode() if isinstance(tag, bytes) else tag for tag in reply[0::2]]
        if tags:
            self.hold(tags)  # before anything that could raise
        return [Taken.parse(item, tag) for tag, item in zip(tags, reply[1::2], strict=True)]

    def ack(self, tags: Iterable[str]) -> None:
        """Forget messages fully handled: kombu's ack (both indices), and stop holding them."""
        tags = list(tags)
        if not tags:
            return
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.hdel(self.unacked_key, *tags)
            pipe.execute()
        self.release(tags)

    def writes_for(self, task: Any) -> bool:
        """Whether :meth:`send` may send ``task``'s messages: the ones of priority 0 (those
        of kombu's plain queue list)."""
        return not (task.priority or task.app.conf.task_default_priority)

    def send(self, tasks: Iterable[tuple[str, str, Any, str, str | None]]) -> None:
        """Send Celery tasks, each ``(task name, task id, its one argument, queue, the id of
        the task that sends it)``: the task message Celery would send
        (:func:`notifier.wire.protocol.task_message`, what the web side writes too) LPUSHed into
        each queue's list, as kombu's Redis transport does, without kombu's cost per message (a
        base64 body, ``argsrepr``, a round trip per task): all in one round trip, unless
        Celery's publish signals have receivers, which are sent for each, one at a time."""
        if signalled():
            for task in tasks:
                self.write([self.compose(*task)])
        else:
            self.write([self.compose(*task) for task in tasks])

    def compose(
        self, name: str, task_id: str, argument: Any, queue: str, parent_id: str | None
    ) -> tuple[str, str]:
        """The list and the message :meth:`write` writes for one task (see :meth:`send`); its
        headers carry the current trace context."""
        message = task_message(name, task_id, [argument], queue, parent_id=parent_id)
        return self.key_prefix + queue, message

    def write(self, composed: list[tuple[str, str]]) -> None:
        """Write what :meth:`compose` made, in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            for key, message in composed:
                pipe.lpush(key, message)
            pipe.execute()
        for _, message in composed:
            published(message)

    def give_back(self, queue: str, taken: list[Taken]) -> None:
        """Put messages taken and not handled back at the head of ``queue``, oldest next, as
        they were (one transaction), and stop holding them."""
        if not taken:
            return
        tags = [message.tag for message in taken]
        with self.client.pipeline(transaction=True) as pipe:
            # RPUSH: where BRPOP takes the next message; the oldest last, so that it is next.
            pipe.rpush(self.key_prefix + queue, *[message.raw for message in reversed(taken)])
            pipe.zrem(self.unacked_index_key, *tags)
            pipe.hdel(self.unacked_key, *tags)
            pipe.execute()
        self.release(tags)

    def hold(self, tags: Iterable[str]) -> None:
        """Keep refreshing the time of these unacknowledged messages while this process lives."""
        with self._lock:
            self._held.update(tags)
            if self._refresher is None or self._refresher_pid != os.getpid():
                # A forked pool process starts its own thread (the parent's did not follow it).
                self._refresher_pid = os.getpid()
                self._refresher = threading.Thread(
                    target=self._refresh_forever, name="notifier-taken-visibility", daemon=True
                )
                self._refresher.start()

    def release(self, tags: Iterable[str]) -> None:
        """Stop refreshing these messages (acknowledged, or left for the sweep to restore)."""
        with self._lock:
            self._held.difference_update(tags)

    @property
    def held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    def _refresh(self) -> None:
        """Score every held message with the time now (only those still unacknowledged)."""
        tags = self.held
        if tags:
            self.client.zadd(self.unacked_index_key, dict.fromkeys(tags, time.time()), xx=True)

    def _refresh_forever(self) -> None:
        while True:
            time.sleep(self.visibility_timeout / 3)
            try:
                self._refresh()
            except (redis.RedisError, OSError):
                logger.warning("could not refresh the dispatch messages this process took")


#: The transport options the taker honours, or that change neither where nor how it connects
#: nor what it reads and writes: with any other (``connection_class``, ``sentinel_kwargs``,
#: ``credential_provider``...), dispatch leaves taking to kombu.
_TAKER_OPTIONS = frozenset(
    {
        "visibility_timeout",
        "ack_emulation",
        "global_keyprefix",
        "unacked_key",
        "unacked_index_key",
        "unacked_mutex_key",
        "unacked_mutex_expire",
        "unacked_restore_limit",
        "unacked_restore_interval",
        "unacked_restore_throttle",
        "polling_interval",
        "brpop_timeout",
        "priority_steps",
        "sep",
        "queue_order_strategy",
        "fanout_prefix",
        "fanout_patterns",
        "max_retries",
        "interval_start",
        "interval_step",
        "interval_max",
        *("socket_timeout", "socket_connect_timeout", "socket_keepalive"),
        *("socket_keepalive_options", "retry_on_timeout", "health_check_interval"),
        *("client_name", "max_connections"),
    }
)
# The connection options of kombu's Redis channel the taker's client takes as they are.
_CONNECTION_OPTIONS = (
    "socket_keepalive",
    "socket_keepalive_options",
    "retry_on_timeout",
    "health_check_interval",
    "client_name",
)


@cache
def taker_of(app: Celery) -> Taker | None:
    """The taker of ``app``'s broker, in this process; None when the taker could not connect
    as kombu does: a broker that is not one Redis (Sentinel, failover URLs, another transport),
    TLS (``rediss://``, ``broker_use_ssl``), a URL with a query, transport options it would
    ignore (:data:`_TAKER_OPTIONS`), or without kombu's emulated acks; and on a Celery or kombu
    whose internals were not checked (:func:`tasks.broker.internals_checked`). Dispatch then
    takes no more than its own message."""
    if not internals_checked():
        return None
    url = app.conf.broker_read_url or app.conf.broker_url
    direct = direct_redis_url(url) if isinstance(url, str) else None
    options = app.conf.broker_transport_options or {}
    if (
        direct is None
        or app.conf.broker_use_ssl
        or not set(options) <= _TAKER_OPTIONS
        or not options.get("ack_emulation", True)
    ):
        return None
    connection = {name: options[name] for name in _CONNECTION_OPTIONS if name in options}
    try:
        client = redis.Redis.from_url(
            direct,
            socket_timeout=options.get("socket_timeout") or 10,
            socket_connect_timeout=options.get("socket_connect_timeout") or 5,
            **connection,
        )
    except (ValueError, TypeError) as exc:
        logger.warning("redis-py cannot read the broker URL (%s): no taking", type(exc).__name__)
        return None
    return Taker(
        client,
        visibility_timeout=float(options.get("visibility_timeout", 3600)),
        key_prefix=options.get("global_keyprefix", "") or "",
        unacked_key=options.get("unacked_key", "unacked"),
        unacked_index_key=options.get("unacked_index_key", "unacked_index"),
    )
