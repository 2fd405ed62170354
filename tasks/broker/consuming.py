"""Consuming from kombu's Redis transport with nothing lost when the worker dies.

kombu takes a message in two steps: a BRPOP pops it from its queue's list, then, once the
reply is read, ``QoS.append`` registers it as unacknowledged (the ``unacked`` hash and the
``unacked_index`` sorted set, from which a worker's sweep hands out again what a dead worker
held). Between the two, the message is only in a socket's buffer or in the worker's memory: a
worker killed then loses it (celery/kombu#305, celery/celery#7950). A BRPOP waiting in Redis
hands it the next message pushed, however late the worker reads the reply: with workers
SIGKILLed under a steady flow of events (tests/integration/test_worker_deaths.py), two runs of
24 kills lost 8 and 7 events, each pushed while the killed worker's BRPOP waited (in the
second run, 5 to 44 ms before the kill) and never registered: whole events, and one listener's
task alone.

:class:`AtomicChannel` takes each message with a Lua script (``take.lua``) that pops it and
registers it, both in one step on the Redis server; kombu delivers it as it delivers a BRPOP's
reply. Redis cannot block inside a script, and no Redis command blocks on several lists without
popping from them, so when every queue is empty the channel waits (:data:`WAIT_FIRST` seconds,
doubling up to :data:`WAIT_MOST`, back to the first after a message) with a BLMOVE of its first
queue into itself, which takes nothing and returns at once when that queue gets a message (a
plain wait on Redis older than 6.2); then it takes again. A worker's first queue is the first
of the routing table, where events come in; its listeners' queues are fed by dispatch runs,
mostly its own, which come while it waits the shortest.

The messages a dead worker held are handed out again by kombu's own sweep once the visibility
timeout is over, as before; :class:`AtomicQoS` makes the sweep set aside an entry it cannot
read (it raised on it, and stopped there for good).

What it relies on, in kombu's Redis transport (``kombu/transport/redis.py``, checked with
kombu 5.7.0: :data:`KOMBU_CHECKED`; a channel missing one of the names fails when the worker
starts): the channel's ``_brpop_start`` (send the command that takes) and ``_brpop_read`` (read
its reply, parsed under the name ``BRPOP``, and deliver it) and what they use (``_in_poll``,
``_brpop_sent_at``, ``_queue_cycle``, ``_q_for_pri``, ``priority_steps``, ``active_queues``,
``global_keyprefix``, ``sep``, ``_flush_brpop_reauth``); ``QoS.append``, ``restore_by_tag`` and
``_remove_from_indices``; and the layout they read and write: ``[message, exchange,
routing_key]`` in the ``unacked`` hash under the delivery tag (the envelope's
``properties.delivery_tag``), the tag scored by the time it was taken in ``unacked_index``, both
named by the ``unacked_key``/``unacked_index_key`` transport options and the global key prefix.
kombu's acknowledgement, its sweep (``restore_visible``), tasks/broker/visibility.py's refresh and
dispatch's taker (tasks/broker/taking.py) share that layout. The waits need Redis 6.2 (BLMOVE) to
end when a message comes. On a Celery or kombu whose internals were not checked
(:func:`tasks.broker.internals_checked`), the channel and its QoS are kombu's own, as they are.

Beside the other internals notifier relies on: docs/internals.md,
"Taking a message in one step".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import Empty
from time import monotonic, time
from typing import TYPE_CHECKING, Any

import kombu
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from tasks.broker.lua import lua_script
from tasks.broker.versions import CHECKED, internals_checked

__all__ = ["KOMBU_CHECKED", "WAIT_FIRST", "WAIT_MOST", "AtomicChannel", "AtomicQoS"]

logger = logging.getLogger("notifier")

#: The kombu versions whose Redis transport this module was checked against.
KOMBU_CHECKED = CHECKED["kombu"]
#: How long the channel waits for a message after it found every queue empty, in seconds, the
#: first time, and at most (the wait doubles while the queues stay empty). A message pushed to
#: the first queue ends the wait at once; one pushed to another waits until the wait is over.
WAIT_FIRST = 0.002
WAIT_MOST = 0.1

# The kombu Channel attributes this module uses, checked once a channel is made, so that a
# kombu without one of them fails when the worker starts, not at its first message.
_RELIED_ON = (
    "_brpop_start",
    "_brpop_read",
    "_queue_cycle",
    "_q_for_pri",
    "priority_steps",
    "active_queues",
    "global_keyprefix",
    "sep",
    "unacked_key",
    "unacked_index_key",
    "_flush_brpop_reauth",
)


class AtomicQoS(kombu_redis.QoS):
    """kombu's Redis QoS, whose ``append`` writes nothing for a message the take script
    registered already (it would write the same entry again: its own JSON of the same
    envelope, in the same field), and whose sweep sets aside an entry it cannot read instead of
    stopping on it."""

    if TYPE_CHECKING:  # kombu's own, which kombu-stubs leave out
        channel: AtomicChannel
        _remove_from_indices: Callable[[str], Any]

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False) -> None:
        try:
            super().restore_by_tag(tag, client=client, leftmost=leftmost)
        except (ValueError, TypeError):
            if not self.channel._checked:
                raise  # kombu's own sweep, as it is
            # kombu 5.7.0's restore_by_tag reads the entry (json, then [message, exchange,
            # routing_key]) unguarded: one it cannot read raised out of every sweep, and the
            # messages behind it stayed unacknowledged. It is one the take script registered
            # and the worker died before it removed it (Redis's Lua JSON reads more than
            # Python's), or one written by something else: handed to on_unreadable, removed.
            with self.channel.conn_or_acquire(client) as reader:
                entry = reader.hget(self.unacked_key, tag)  # kombu's client prefixes the key
            if entry is None or _readable_entry(entry):
                raise
            problem = "an unacknowledged entry kombu cannot read, set aside for the sweep to go on"
            self.channel.on_unreadable(self.unacked_key, entry, problem)
            self._remove_from_indices(tag).execute()

    def append(self, message: Any, delivery_tag: str) -> None:
        if getattr(self.channel, "_delivering_taken", False):
            # kombu 5.7.0: virtual.QoS.append keeps the message among those this channel
            # holds (QoS._delivered, which acks and tasks/broker/visibility.py read).
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class AtomicChannel(kombu_redis.Channel):
    """kombu's Redis channel, which takes each message and registers it as unacknowledged in
    one step on the Redis server (see the module's doc).

    A queue item that kombu could not deliver (not JSON, not a kombu envelope, or one without a
    delivery tag, exchange and routing key) is given to :meth:`on_unreadable`, then removed;
    kombu would stop the worker on it and lose it. Without kombu's acknowledgement emulation
    (``ack_emulation=False``: nothing is registered), the channel takes with kombu's BRPOP.
    """

    QoS = AtomicQoS

    if TYPE_CHECKING:  # kombu's own, which kombu-stubs leave out
        _queue_cycle: Any
        _q_for_pri: Callable[[str, int], str]
        connection_errors: tuple[type[BaseException], ...]
        _flush_brpop_reauth: Callable[[], None]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # On a kombu or Celery whose internals were not checked: kombu's own channel, as is.
        self._checked = internals_checked()
        missing = [name for name in _RELIED_ON if not hasattr(self, name)]
        if self._checked and missing:
            version = getattr(kombu, "__version__", "?")
            raise RuntimeError(
                f"kombu {version}'s Redis channel lacks {', '.join(missing)}, which notifier's "
                f"atomic consumption uses (checked with kombu {', '.join(KOMBU_CHECKED)})"
            )
        self._atomic = self._checked and bool(self.ack_emulation)
        self._delivering_taken = False
        self._found = False  # the last take found an item, readable or not
        self._waiting = False  # the command in flight is a wait, not a take
        self._wait_next = False  # the last take found every queue empty: wait, then take
        self._wait: float | None = None  # how long the last wait lasted (None: none since a take)
        # The reply of a take, like a BRPOP's, is read under the name BRPOP (kombu 5.7.0's
        # _brpop_read), by this response callback.
        if self._checked:
            self.client.set_response_callback("BRPOP", self._checked_reply)
        if self._atomic:
            with self.conn_or_acquire() as client:
                self._take_sha = client.script_load(lua_script("take.lua"))
                self._wait_in_queue = _redis_version(client) >= (6, 2)

    # What the worker does with an item it cannot deliver. -----------------------------------

    def on_unreadable(self, queue: str, item: bytes, problem: str) -> None:
        """Called with an item of ``queue`` that kombu cannot deliver, before it is removed."""
        logger.error("queue %r: not a kombu message, dropped: %s: %r", queue, problem, item)

    # kombu 5.7.0's Channel._brpop_start: send the command that takes the next message. ------

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._atomic:
            super()._brpop_start(timeout)  # type: ignore[misc]  # not in kombu-stubs
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        prefix = self.global_keyprefix
        lists = [
            prefix + self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues
        ]
        connection = self.client.connection
        if self._wait_next and self._wait is not None:
            self._wait_next, self._waiting = False, True
            if self._wait_in_queue:
                # The channel's first queue (a worker's first is the first of the routing
                # table): the one that messages enter by. Moving its last item to its end takes
                # nothing and changes nothing.
                first = prefix + next(iter(self.active_queues))  # kombu 5.7.0: a list
                command: tuple[Any, ...] = ("BLMOVE", first, first, "RIGHT", "RIGHT", self._wait)
            else:
                command = ("BLPOP", prefix + "_notifier.never_written", self._wait)
        else:
            self._waiting = False
            unacked, index = prefix + self.unacked_key, prefix + self.unacked_index_key
            command = ("EVALSHA", self._take_sha, len(lists) + 2, *lists, unacked, index, time())
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        connection.send_command(*command)

    # kombu 5.7.0's Channel._brpop_read: read the reply and deliver its message. --------------

    def _brpop_read(self, **options: Any) -> Any:
        if not self._atomic:
            return super()._brpop_read(**options)  # type: ignore[misc]  # not in kombu-stubs
        if self._waiting:
            self._waiting = False
            self._read_wait(**options)
        self._found = False
        self._delivering_taken = True
        try:
            delivered = super()._brpop_read(**options)  # type: ignore[misc]  # as above
        except Empty:
            if not self._found:
                self._wait = WAIT_FIRST if self._wait is None else min(self._wait * 2, WAIT_MOST)
                self._wait_next = True
            raise
        except redis.exceptions.NoScriptError:
            # The server lost its scripts (restarted, SCRIPT FLUSH): load it again, take again.
            with self.conn_or_acquire() as client:
                self._take_sha = client.script_load(lua_script("take.lua"))
            raise Empty() from None
        finally:
            self._delivering_taken = False
        self._wait = None
        return delivered

    def _read_wait(self, **options: Any) -> None:
        # As kombu's _brpop_read does with its reply, minus delivering: what the wait returns
        # was not taken. The next take follows.
        try:
            try:
                self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        raise Empty()

    def _checked_reply(self, reply: Any, **options: Any) -> tuple[Any, Any] | None:
        # The take script's reply, or BRPOP's (without ack emulation), made kombu's BRPOP
        # reply, (list, item), for kombu to deliver; None for nothing to deliver.
        if not reply:
            return None
        self._found = True
        key, item, *taken = reply
        tag = bytes_to_str(taken[0]) if taken else None  # None: BRPOP popped it
        problem = self._problem(item, registered=tag != "")
        if problem is None:
            return (key, item)
        queue = bytes_to_str(key).removeprefix(self.global_keyprefix).rsplit(self.sep, 1)[0]
        self.on_unreadable(queue, item, problem)
        if tag is not None:
            self._remove(key, item, tag)
        return None

    def _problem(self, item: bytes, *, registered: bool) -> str | None:
        # What kombu does next with the item, minus delivering it.
        try:
            envelope = loads(bytes_to_str(item))
        except ValueError as exc:
            return f"not JSON ({exc})"
        try:
            self.Message(envelope, channel=self)
        except Exception as exc:
            return f"JSON, but not a kombu envelope ({type(exc).__name__}: {exc})"
        if not registered:
            return "a kombu envelope without a delivery tag, exchange or routing key"
        return None

    def _remove(self, key: bytes, item: bytes, tag: str) -> None:
        # An item kept by on_unreadable: registered (HDEL and ZREM, as kombu's ack does), or
        # left in its list by the script (removed from the right end, where it was).
        client = redis.Redis(connection_pool=self.pool)  # keys in full: no kombu prefixing
        prefix = self.global_keyprefix
        if tag:
            with client.pipeline() as pipe:
                pipe.zrem(prefix + self.unacked_index_key, tag)
                pipe.hdel(prefix + self.unacked_key, tag)
                pipe.execute()
        else:
            client.lrem(key, -1, item)  # type: ignore[arg-type]  # redis-py sends bytes as they are


def _readable_entry(entry: bytes) -> bool:
    # As kombu 5.7.0's restore_by_tag reads an entry of the unacked hash.
    try:
        _message, _exchange, _routing_key = loads(bytes_to_str(entry))
    except (ValueError, TypeError):
        return False
    return True


def _redis_version(client: redis.Redis) -> tuple[int, ...]:
    try:
        version = str(client.info("server")["redis_version"])
        return tuple(int(part) for part in version.split(".")[:2])
    except (redis.RedisError, KeyError, ValueError):
        return (0,)  # INFO refused or unreadable: wait as on an old Redis
