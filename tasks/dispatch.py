"""Dispatch: the task that receives each message and runs every matching listener.

Each matching listener runs as its own Celery task, so one that fails neither blocks nor
re-runs the others. A message that does not follow the wire contract, and a listener that
failed its last attempt, end in the dead-letter store.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Collection
from functools import cache
from typing import Any

import redis
from celery import Task, signals
from kombu.exceptions import KombuError

from notifier.errors import ListenersNotSent, MalformedMessage
from notifier.message import DISPATCH_TASK, decode
from tasks.app import app, registry
from tasks.dead_letters import DeadLetters
from tasks.inline import run_alone
from tasks.ordering import OrderGuard
from tasks.registry import Registry

__all__ = ["DISPATCH_RETRIES", "dead_letters", "dispatch", "fan_out"]

logger = logging.getLogger("notifier")

#: How often dispatch tries again to send a message the broker did not take (backoff: 1 s,
#: 2 s, 4 s... at most 60 s apart, about 15 minutes in all).
DISPATCH_RETRIES = 20


@cache
def dead_letters() -> DeadLetters:
    """The dead-letter store of this worker process."""
    return DeadLetters.from_url(app.conf.notifier_dead_letters_url)


@cache
def order_guard() -> OrderGuard:
    """The per-object versions of this worker's ordered listeners."""
    # A dead worker's claims lapse about when its messages are handed out again.
    return OrderGuard.from_url(
        app.conf.notifier_order_url, lease=app.conf.notifier_visibility_timeout
    )


def fan_out(
    data: Any,
    registry: Registry,
    dead_letters: DeadLetters,
    only: Collection[str] | None = None,
    queue: str | None = None,
) -> list[str]:
    """Send the message ``data`` to every listener of ``registry`` that wants it (of those
    named in ``only``, when given), and return their names.

    A malformed message is dead-lettered with the reason (and ``queue``, where it came from).
    When the broker does not take the message for some listeners, the others still get it, and
    :class:`ListenersNotSent` names the ones that did not.
    """
    try:
        message = decode(data)
    except MalformedMessage as exc:
        letter = dead_letters.add(exc.reason, data, queue=queue)
        logger.error("malformed message kept as dead letter %s: %s", letter.id, exc.reason)
        return []
    sent, not_sent = [], []
    for listener in registry.matching(message):
        if only is not None and listener.name not in only:
            continue
        try:
            listener.task.apply_async(
                args=(message.as_dict(),),
                task_id=f"{message.task_id}:{listener.name}",
                queue=listener.queue,
            )
        except (KombuError, redis.RedisError, OSError):
            logger.exception("event %s not sent to listener %s", message.event_id, listener.name)
            not_sent.append(listener.name)
        else:
            sent.append(listener.name)
    logger.info(
        "event %s (%s %s) sent to %d listeners: %s",
        message.event_id,
        message.action,
        message.resource_name,
        len(sent),
        ", ".join(sent) or "none",
    )
    if not_sent:
        raise ListenersNotSent(not_sent)
    return sent


# A pool process lost while running a listener's first attempt (tasks/inline.py) has dispatch
# retried at once, as the listener's own task would be, not after Celery's default 3 minutes.
@app.task(name=DISPATCH_TASK, bind=True, max_retries=DISPATCH_RETRIES, default_retry_delay=0)
def dispatch(self: Task[Any, Any], message: Any, only: list[str] | None = None) -> list[str]:
    """Run every listener that wants ``message``; try again for those it could not reach."""
    try:
        # A message that one listener alone wants: its first attempt runs here.
        delivery_info = getattr(self.request, "delivery_info", None) or {}
        again = bool(self.request.retries or delivery_info.get("redelivered"))
        ran = run_alone(message, registry, dead_letters(), only, again=again)
        if ran is not None:
            return ran
        return fan_out(message, registry, dead_letters(), only, queue=_queue_of(self))
    except ListenersNotSent as exc:
        countdown = min(2**self.request.retries, 60)
        raise self.retry(kwargs={"only": exc.listeners}, countdown=countdown, exc=exc) from None


def _queue_of(task: Any) -> str | None:
    # The queue the running task was taken from: Celery's routing key, our queue names.
    delivery_info = getattr(task.request, "delivery_info", None) or {}
    queue = delivery_info.get("routing_key")
    return queue if isinstance(queue, str) else None


#: How many deliveries of a listener's message a worker's death may add to its attempts
#: (``max_retries`` + 1) before the message goes to the dead letters. A pool process's death
#: already counts as an attempt; this bounds the deaths of a whole worker (SIGKILL, OOM), after
#: which the Redis transport hands the message out again without counting.
EXTRA_DELIVERIES = 1


def within_deliveries(task: Any, message: Any) -> bool:
    """Count this delivery of a listener's message; past its bound, keep the message as a dead
    letter instead of running the listener again."""
    request = getattr(task, "request", None)
    task_id = getattr(request, "id", None)
    if not task_id:
        return True  # called directly, not by a worker
    key = f"notifier:deliveries:{task_id}"
    try:
        with dead_letters().client.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, 7 * 24 * 3600)
            deliveries, _ = pipe.execute()
    except (redis.RedisError, OSError):
        return True  # cannot count: rather run it once more than lose it
    limit = (getattr(task, "max_retries", None) or 0) + 1 + EXTRA_DELIVERIES
    if deliveries <= limit:
        return True
    listener = next((entry.name for entry in registry if entry.task.name == task.name), task.name)
    letter = dead_letters().add(
        f"delivered {deliveries} times without finishing: its worker died each time",
        message,
        listener=listener,
        attempts=deliveries - 1,
        queue=_queue_of(task),
    )
    logger.error("%s: its worker died each time; kept as dead letter %s", listener, letter.id)
    return False


def forget_delivery(task: Any) -> None:
    """Uncount the delivery of a listener's message that was sent back to its queue unrun
    (an ordered listener whose objects were busy): it was not an attempt."""
    task_id = getattr(getattr(task, "request", None), "id", None)
    # When Redis is out of reach, it stays counted: the bound holds, one delivery sooner.
    with contextlib.suppress(redis.RedisError, OSError):
        dead_letters().client.decr(f"notifier:deliveries:{task_id}")


registry.may_run = within_deliveries
registry.order_guard = order_guard
registry.on_defer = forget_delivery


@signals.task_failure.connect
def _keep_failed_message(
    sender: Any = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **signal_kwargs: Any,
) -> None:
    # Sent once a task failed for good (its retries, if any, are spent).
    name = getattr(sender, "name", None)
    failed: list[str | None]
    if name == DISPATCH_TASK:
        # The listeners dispatch could not reach; or none in particular, for a message that
        # dispatch could not even take (wrong arguments, for one).
        failed = list(exception.listeners) if isinstance(exception, ListenersNotSent) else [None]
    else:
        failed = [listener.name for listener in registry if listener.task.name == name]
    if not failed:
        return
    # The message as it came, or the arguments it came with when they are not one message.
    message = args[0] if args and len(args) == 1 else {"args": args, "kwargs": kwargs}
    # The task's request is still the failed run's: its retries are the attempts before it.
    retries = getattr(sender.request, "retries", None)
    for listener_name in failed:
        try:
            letter = dead_letters().add(
                f"{type(exception).__name__}: {exception}",
                message,
                listener=listener_name,
                attempts=retries + 1 if isinstance(retries, int) else None,
                queue=_queue_of(sender),
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
            continue
        logger.error("%s failed for good: kept as dead letter %s", listener_name or name, letter.id)
