"""The workers' consumer: a message a worker cannot read is kept as a dead letter, and the worker
goes on.

A worker reads a queue in three steps, and a malformed message can fail each of them:

1. kombu's Redis transport takes a queue item and parses it as a kombu message: a JSON
   envelope of headers, properties and the encoded body. It has no guard there: an item that is
   no such envelope (``redis-cli LPUSH notifier 'not json'``) raises out of the worker's event
   loop, the worker stops ("Unrecoverable error"), and the item is lost. (The consumer's
   channel takes each item and registers it as unacknowledged in one step, so that a worker
   killed at any instant loses none: tasks/broker/consuming.py.)
2. Celery's consumer reads the envelope as a task message. For the failures it knows, it calls
   ``on_decode_error`` (a body it cannot decode), ``on_unknown_message`` (no task named),
   ``on_unknown_task`` (a task this worker does not have) and ``on_invalid_task`` (a message
   that breaks the task protocol, or a content type the worker refuses, like pickle); each logs
   the message and drops it. Others (a body that is not ``[args, kwargs, embed]``, headers
   without an id...) raise out of the event loop too, and stop the worker; the message, not yet
   acknowledged, goes back to its queue to stop the next one.
3. ``notifier.dispatch`` checks its argument against the wire contract (``tasks/dispatch/task.py``).

Each failure ends in the dead letters with a reason that says what was wrong and on which queue,
the message is acknowledged, and the worker takes the next one.

Why these hooks. ``worker_consumer`` is Celery's setting for choosing the consumer class, and the
four ``on_*`` methods are where Celery itself sends what it cannot read: overriding them adds
keeping the message to Celery's own handling (its log line, acknowledging, signals, result
backend, events) instead of replacing it. Two failures reach none of them, and need the two
smallest hooks next to them: the task message handler that Celery builds
(``create_task_handler``, checked on Celery 5.7.0) is wrapped, to keep what it fails on; and
the consumer's Redis channel (tasks/broker/consuming.py, which takes each item) checks the
envelope before kombu parses it, and gives what kombu could not deliver to ``on_unreadable``
(Redis and Redis Sentinel, the brokers notifier runs on). A custom task strategy, a transport of
our own (Celery would log it as the broker's URL scheme), or patching kombu or Celery would
reach further into code that changes between releases.

On a Celery or kombu whose internals were not checked (:func:`tasks.broker.internals_checked`),
the channel is kombu's own: step 1 is unguarded, as with Celery alone; steps 2 and 3 keep what
they fail on as before.

Beside the other internals notifier relies on: docs/internals.md,
"What a worker cannot read".
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import kombu
import redis
from celery.worker.consumer.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from vine import promise as vine_promise

from tasks.broker.consuming import AtomicChannel
from tasks.broker.versions import internals_checked
from tasks.dead_letters import DeadLetters

__all__ = ["Consumer", "checking_channel", "dead_letter", "readable"]

logger = logging.getLogger("notifier")


def dead_letter(
    store: DeadLetters,
    reason: str,
    message: Any,
    *,
    queue: str | None,
    traceback: str | None = None,
) -> None:
    """Dead-letter in ``store`` a message the worker could not read; log either way."""
    try:
        letter = store.add(reason, message, queue=queue, traceback=traceback)
    except redis.RedisError:
        # Nowhere to keep it: the log is the last place it is seen, as with Celery alone.
        logger.exception("%s; could not be kept as a dead letter, dropped: %r", reason, message)
        return
    logger.error("%s; kept as dead letter %s", reason, letter.id)


def readable(body: bytes | str | None) -> Any:
    """A body as a dead letter shows it: JSON when it is, else its text, else its bytes' repr.

    Only ever parsed as JSON: a pickle is never loaded.
    """
    if body is None:
        return None
    try:
        text = body.decode() if isinstance(body, bytes) else body
    except UnicodeDecodeError:
        return repr(body)
    try:
        return json.loads(text)
    except ValueError:
        return text


def _queue_of(message: Any) -> str | None:
    delivery_info = getattr(message, "delivery_info", None)
    queue = delivery_info.get("routing_key") if isinstance(delivery_info, dict) else None
    return queue if isinstance(queue, str) else None


def _as_received(message: Any) -> dict[str, Any]:
    return {
        "headers": message.headers,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "body": readable(message.body),
    }


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Consumer(CeleryConsumer):
    """Celery's consumer, but what it cannot read is kept as a dead letter, not dropped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Asked here, in the worker's main process before its pool forks (the pool processes
        # inherit the answer), so that an unchecked version is logged once per worker.
        self.internals_checked = internals_checked()

    def dead_letters(self) -> DeadLetters:
        """The worker's dead letters, as the worker's start built them (tasks/wiring.py)."""
        from tasks.wiring import wired  # the wiring knows the whole worker: imported late

        return wired(self.app).dead_letters

    def _dead_letter(self, message: Any, what: str, traceback: str | None = None) -> None:
        # The message as it came, and what was wrong with it, after the queue it came from.
        queue = _queue_of(message)
        reason = f"queue {queue!r}: {what}"
        dead_letter(
            self.dead_letters(), reason, _as_received(message), queue=queue, traceback=traceback
        )

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        content_type = getattr(message, "content_type", None)
        self._dead_letter(message, f"a body that cannot be decoded ({content_type}): {_error(exc)}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, "not a task message (it names no task)")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        name = headers.get("task")
        self._dead_letter(message, f"a message for task {name!r}, which this worker does not have")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, f"an invalid task message: {_error(exc)}")
        super().on_invalid_task(body, message, exc)

    def create_task_handler(self, promise: Any = vine_promise) -> Callable[..., Any]:
        handle = super().create_task_handler(promise)
        connection_errors = tuple(self.connection_errors)  # type: ignore[attr-defined]  # untyped

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except Exception as exc:
                # A lost connection: the consumer reconnects and the message comes again. But
                # kombu's Redis transport counts KeyError as one (for a stale poller file
                # descriptor): raised while reading one message, it means a key the message
                # lacks, and re-raising it would have the consumer reconnect for ever.
                if isinstance(exc, connection_errors) and not isinstance(exc, KeyError):
                    raise
                # The boundary that must not fail: whatever else Celery raises on one message
                # would stop the worker, and come back to stop the next one.
                self._dead_letter(
                    message,
                    f"a task message Celery cannot read: {_error(exc)}",
                    traceback.format_exc(),
                )
                if not message.acknowledged:
                    message.ack_log_error(logger, connection_errors)
                return None

        return on_task_received

    def connection_for_read(self, heartbeat: float | None = None) -> kombu.Connection:
        connection = self.app.connection_for_read(heartbeat=heartbeat)
        # Set before it connects: its first channel is the one tasks are consumed on. Replacing
        # the transport's Channel class (kombu 5.7.0: Transport.Channel, the class its
        # create_channel makes) is the one way to give kombu a channel of our own. Not on an
        # unchecked Celery or kombu: kombu's own channel, and a queue item that is not a kombu
        # message stops the worker, as with Celery alone.
        transport = connection.transport
        base: type[_CheckingChannel] | None = None
        if self.internals_checked and type(transport) is kombu_redis.Transport:
            base = _CheckingChannel
        elif self.internals_checked and type(transport) is kombu_redis.SentinelTransport:
            base = _CheckingSentinelChannel
        if base is not None:
            # One of the two Redis transports, as checked above: both have a Channel.
            transport.Channel = checking_channel(base, self.dead_letters)  # type: ignore[attr-defined]
        return self.ensure_connected(connection)


class _CheckingChannel(AtomicChannel):
    """A Redis channel that takes each message atomically (tasks/broker/consuming.py) and keeps
    a queue item that is not a kombu message as a dead letter, instead of letting it stop the
    worker. Its dead letters: what :func:`checking_channel` gives the class."""

    dead_letters: Callable[[], DeadLetters]

    def on_unreadable(self, queue: str, item: bytes, problem: str) -> None:
        dead_letter(
            self.dead_letters(),
            f"queue {queue!r}: not a Celery message: {problem}",
            readable(item),
            queue=queue,
        )


class _CheckingSentinelChannel(_CheckingChannel, kombu_redis.SentinelChannel):
    pass


def checking_channel(
    base: type[_CheckingChannel], dead_letters: Callable[[], DeadLetters]
) -> type[_CheckingChannel]:
    """The channel class ``base`` (Redis or Sentinel), dead-lettering in ``dead_letters()``."""
    return type(base.__name__, (base,), {"dead_letters": staticmethod(dead_letters)})
