"""What dispatch dead-letters: a listener (or a dispatch) that failed for good, and the taken
items it cannot read.

- A task that failed for good (Celery's ``task_failure``, connected in
  :mod:`tasks.dispatch.signals`, its retries spent): a listener's message is dead-lettered
  naming the listener; a dispatch's, naming each listener it could not reach (or none, for a
  message dispatch could not even take: wrong arguments, for one). When the dead letters are out
  of reach, the message is logged whole at CRITICAL: the last place it is. A dispatch that
  raised :class:`KeptAsDeadLetter` (its malformed message is kept already) is not kept again.
- An item taken from a queue that is no dispatch task message this worker can run
  (:class:`tasks.broker.taking.Taken` with a ``problem``): dead-lettered and acknowledged at
  once, before anything else is handled, so that nothing kombu's sweep cannot read stays
  unacknowledged for long.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from celery.exceptions import Reject

from notifier.errors import ListenersNotSent
from notifier.wire.logs import log_fields
from notifier.wire.message import DISPATCH_TASK
from tasks.broker.taking import Taken, Taker
from tasks.dead_letters import DeadLetters
from tasks.dispatch.delivery import queue_of
from tasks.listeners.registry import Registry

__all__ = ["KeptAsDeadLetter", "dead_letter_failure", "dead_letter_unreadable"]

logger = logging.getLogger("notifier")


class KeptAsDeadLetter(Reject):
    """What a dispatch task whose message went to the dead letters raises: Celery rejects the
    message (the broker drops it) and reports the task failed, and no second dead letter is
    written for it. Built as ``KeptAsDeadLetter(reason, requeue=False)``, as Reject is, so that
    it reaches the worker's main process whole."""


def dead_letter_failure(
    registry: Registry,
    dead_letters: DeadLetters,
    task: Any,
    exception: BaseException | None,
    args: Any,
    kwargs: Any,
    einfo: Any,
) -> dict[str | None, bool]:
    """Dead-letter the message of ``task``, which failed for good with ``exception``, when it
    is a listener's task of ``registry`` or the dispatch task (see the module's doc). Return
    whether it was kept, for each listener it failed for (None: for no listener in
    particular)."""
    kept: dict[str | None, bool] = {}
    if isinstance(exception, KeptAsDeadLetter):
        return kept  # kept already, by the run that raised it
    name = getattr(task, "name", None)
    failed: list[str | None]
    if name == DISPATCH_TASK:
        # The listeners dispatch could not reach; or none in particular, for a message that
        # dispatch could not even take (wrong arguments, for one).
        failed = list(exception.listeners) if isinstance(exception, ListenersNotSent) else [None]
    else:
        failed = [listener.name for listener in registry.of_task(name)]
    if not failed:
        return kept
    # The message as it came, or the arguments it came with when they are not one message.
    message = args[0] if args and len(args) == 1 else {"args": args, "kwargs": kwargs}
    # The task's request is still the failed run's: its retries are the attempts before it.
    retries = getattr(task.request, "retries", None)
    for listener_name in failed:
        try:
            letter = dead_letters.add(
                f"{type(exception).__name__}: {exception}",
                message,
                listener=listener_name,
                attempts=retries + 1 if isinstance(retries, int) else None,
                queue=queue_of(task),
                traceback=str(einfo) if einfo is not None else None,
            )
        except (redis.RedisError, OSError):
            # The last place the message is: say it whole, so that it can be sent again.
            logger.critical(
                "%s failed for good and the dead letters are out of reach; its message: %s",
                listener_name or name,
                json.dumps(message, default=repr),
                exc_info=True,
            )
            kept[listener_name] = False
            continue
        kept[listener_name] = True
        fields = log_fields(_event_id(message), listener_name, queue_of(task))
        logger.error(
            "%s failed for good: kept as dead letter %s",
            listener_name or name,
            letter.id,
            extra=fields,
        )
    return kept


def dead_letter_unreadable(
    taker: Taker, dead_letters: DeadLetters, queue: str | None, items: list[Taken]
) -> bool:
    """Dead-letter each unreadable item taken from ``queue`` and acknowledge it at once. False:
    the dead letters are out of reach: the caller gives the items back to their queue (kombu's
    sweep must not meet them), those dead-lettered already included (twice, at worst)."""
    if not items:
        return True
    try:
        for item in items:
            _dead_letter_one(dead_letters, queue, item)
    except (redis.RedisError, OSError):
        logger.exception("could not dead-letter %d unreadable messages taken", len(items))
        return False
    try:
        taker.ack(item.tag for item in items)
    except (redis.RedisError, OSError):
        logger.exception("could not acknowledge %d unreadable messages taken", len(items))
        taker.release(item.tag for item in items)
    return True


def _event_id(message: Any) -> Any:
    return message.get("event_id") if isinstance(message, dict) else None


def _dead_letter_one(dead_letters: DeadLetters, queue: str | None, item: Taken) -> None:
    reason = f"queue {queue!r}: an invalid dispatch task message: {item.problem}"
    envelope = item.envelope
    if isinstance(envelope, dict):
        received: Any = {
            "headers": envelope.get("headers"),
            "content_type": envelope.get("content-type"),
            "content_encoding": envelope.get("content-encoding"),
            "body": envelope.get("body"),
        }
    else:
        raw = item.raw
        received = {"item": raw.decode(errors="replace") if isinstance(raw, bytes) else raw}
    letter = dead_letters.add(reason, received, queue=queue)
    logger.error("%s; kept as dead letter %s", reason, letter.id)
