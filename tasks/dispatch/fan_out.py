"""Fan-out: one Celery task per listener that wants a message, each on the listener's queue.

Each listener runs as its own task, so that one that fails neither blocks nor re-runs the
others. With the taker of the broker (:mod:`tasks.broker.taking`), the tasks it may write go in
one round trip; the others through Celery. The broker refusing the message for some listeners
does not keep it from the others: :class:`~notifier.errors.ListenersNotSent` names the ones it
did not reach, for dispatch to try again.

A run of dispatch that takes the messages queued behind its own keeps the tasks the taker writes
for a round of them in :class:`RoundSends`, and writes them all in one round trip before the
round is acknowledged: one round trip per round, not per message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from kombu.exceptions import KombuError

from notifier.errors import ListenersNotSent
from notifier.wire.logs import log_fields
from notifier.wire.message import Message
from notifier.wire.protocol import argsrepr, signalled
from notifier.wire.trace_context import attached
from tasks.broker.taking import Taker
from tasks.dispatch.delivery import Delivery, listener_task_id
from tasks.dispatch.task_events import events_of
from tasks.listeners.registry import Listener

__all__ = ["SEND_ERRORS", "RoundSends", "fan_out"]

logger = logging.getLogger("notifier")

#: What the broker raises when it does not take a task.
SEND_ERRORS = (KombuError, redis.RedisError, OSError)


def fan_out(
    message: Message, listeners: Sequence[Listener], taker: Taker | None = None
) -> list[str]:
    """Send ``message`` to each of ``listeners`` (those that want it), as its own task, and
    return their names. Raises :class:`ListenersNotSent` naming those the broker did not take,
    once the others have it."""
    if not listeners:
        return []
    sent: list[str] = []
    not_sent: list[str] = []
    written = [
        listener for listener in listeners if taker is not None and taker.writes_for(listener.task)
    ]
    if written and taker is not None:
        try:
            taker.send(listener_tasks(message, written))
        except (redis.RedisError, OSError):
            logger.exception("event %s not sent to listeners %s", message.event_id, written)
            not_sent.extend(listener.name for listener in written)
        else:
            sent.extend(listener.name for listener in written)
            _sent_events(message, written)
    for listener in listeners:
        if listener in written:
            continue
        try:
            listener.task.apply_async(
                args=(message.as_dict(),),
                task_id=listener_task_id(message.task_id, listener.name),
                queue=listener.queue,
            )
        except SEND_ERRORS:
            logger.exception(
                "event %s not sent to listener %s",
                message.event_id,
                listener.name,
                extra=log_fields(message.event_id, listener.name, listener.queue),
            )
            not_sent.append(listener.name)
        else:
            sent.append(listener.name)
    _log_sent(message, sent)
    if not_sent:
        raise ListenersNotSent(not_sent)
    return sent


class RoundSends:
    """The listener tasks that ``taker`` writes for a round of taken messages, kept until
    :meth:`send` writes them all in one round trip. The listeners of a message whose tasks the
    broker did not take are added to its delivery's ``not_sent``, for dispatch to try again
    (:class:`tasks.dispatch.run.DispatchRun` sends before it acknowledges a round)."""

    def __init__(self, taker: Taker) -> None:
        self.taker = taker
        self.kept: list[tuple[Delivery, Message, list[Listener]]] = []

    def add(self, delivery: Delivery, message: Message, listeners: list[Listener]) -> None:
        """Keep the tasks of ``listeners`` (those the taker writes) for ``message``."""
        if listeners:
            self.kept.append((delivery, message, listeners))

    def send(self) -> None:
        """Write every task kept, in one round trip (one per task when Celery's publish
        signals have receivers); forget them. Each message's tasks are composed in its trace
        context."""
        kept, self.kept = self.kept, []
        if not kept:
            return
        one_by_one = signalled()
        composed: list[tuple[str, str]] = []
        sent: list[tuple[Delivery, Message, list[Listener]]] = []
        failure: BaseException | None = None
        for entry in kept:
            delivery, message, listeners = entry
            tasks = listener_tasks(message, listeners)
            with attached(delivery.headers):
                if not one_by_one:
                    composed.extend(self.taker.compose(*task) for task in tasks)
                    continue
                try:
                    self.taker.send(tasks)
                except (redis.RedisError, OSError) as exc:
                    failure = exc
                else:
                    sent.append(entry)
        if composed:
            try:
                self.taker.write(composed)
            except (redis.RedisError, OSError) as exc:
                failure = exc
            else:
                sent = kept
        done = {id(entry) for entry in sent}
        refused = [entry for entry in kept if id(entry) not in done]
        if refused:
            logger.warning(
                "the listener tasks of %d events taken were not sent, to be sent again: %r",
                len(refused),
                failure,
            )
            for delivery, _, listeners in refused:
                delivery.not_sent.extend(listener.name for listener in listeners)
        for _, message, listeners in sent:
            _log_sent(message, [listener.name for listener in listeners])
            _sent_events(message, listeners)

    def forget(self, delivery: Delivery | None = None) -> None:
        """Drop what is kept (for ``delivery`` alone, when given): its messages are handed out
        again whole."""
        self.kept = [kept for kept in self.kept if delivery is not None and kept[0] is not delivery]


def listener_tasks(
    message: Message, listeners: Sequence[Listener]
) -> list[tuple[str, str, Any, str, str | None]]:
    """What the taker sends for ``message`` to each of ``listeners``
    (:meth:`tasks.broker.taking.Taker.send`): its task, on its queue, sent by dispatch."""
    return [
        (
            listener.task.name,
            listener_task_id(message.task_id, listener.name),
            message.as_dict(),
            listener.queue,
            message.task_id,
        )
        for listener in listeners
    ]


def _sent_events(message: Message, listeners: Sequence[Listener]) -> None:
    # ``task-sent`` of the tasks the taker wrote, as send_task sends it (kombu's path does).
    if not listeners:
        return
    events = events_of(listeners[0].task.app)
    if not events.sends_sent:
        return
    readable = argsrepr((message.as_dict(),))
    for listener in listeners:
        events.sent(
            listener_task_id(message.task_id, listener.name),
            listener.task.name,
            readable,
            listener.queue,
            parent_id=message.task_id,
            root_id=message.task_id,
        )


def _log_sent(message: Message, sent: list[str]) -> None:
    logger.info(
        "event %s (%s %s) sent to %d listeners: %s",
        message.event_id,
        message.action,
        message.resource_name,
        len(sent),
        ", ".join(sent) or "none",
    )
