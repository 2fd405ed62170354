"""Batch listeners: ``@listener("article", batch=100)`` receives a list of events per run.

A listener that does bulk work (a search engine's bulk index, one SQL statement for many rows)
costs about as much for a hundred events as for one. Dispatch collects, over its own message
and the messages it takes after it (tasks/broker/taking.py), the events each batch listener wants,
and sends one task per batch listener with their messages, at most ``batch`` of them and about
:data:`BATCH_BYTES` of JSON (one message larger than that travels alone): its id is
``<first message's task id>+<count>:<listener>``. A batch of one travels as a single message,
with the id any listener's task has, ``<task id>:<listener>``.

A batch runs whole once. If it raises, or if it comes again (a retry after its pool process
died, a redelivery after its worker died), it is not retried whole: each of its events goes on
as a task of its own, a batch of one, whose first retry it is (the same backoff), with the id
``<task id>:<listener>``. From then on each event retries and fails on its own, and one that
keeps failing ends in the dead letters alone, as with any listener: one bad event neither
holds back the others nor takes them to the dead letters, and ``notifier-dead-letters replay``
sends it to the listener as a batch of one.

A batch listener never runs in the dispatch task itself, and does not keep order (``ordered=``,
``parents=``): its events come in the order dispatch took them.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Task, current_task
from celery.utils.time import get_exponential_backoff_interval

from notifier.errors import ListenerError
from notifier.wire.message import decode
from tasks.listeners.event import Event

if TYPE_CHECKING:
    from tasks.listeners.registry import Listener, Registry

__all__ = [
    "BATCH_BYTES",
    "MAX_BATCH",
    "Batches",
    "Delivery",
    "batch_task_id",
    "check_batch",
    "listener_task_id",
    "batch_runner",
]

logger = logging.getLogger("notifier")

#: The largest batch: a batch travels as one task message, and dispatch takes at most this many
#: messages in one run.
MAX_BATCH = 1000
#: How many bytes of messages (their JSON) one batch holds at most, whatever its ``batch``, so
#: that a batch task message stays small (the parts of one large event fill it fast); a
#: message larger than this travels alone.
BATCH_BYTES = 1 << 20


def check_batch(batch: Any, *, ordered: bool, parents: Any) -> int | None:
    """``batch=`` as given to ``@listener``: None, or a whole number of events from 1 to
    :data:`MAX_BATCH`, for a listener that does not keep order."""
    if batch is None:
        return None
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ListenerError(
            f"bad batch={batch!r}: use the most events one run receives, a whole number from 1 "
            f"to {MAX_BATCH}, e.g. batch=100"
        )
    if ordered or parents:
        raise ListenerError(
            f"batch={batch} with ordered= or parents=: a batch listener receives events in the "
            "order dispatch takes them, and cannot keep order; drop one of them"
        )
    return batch


def listener_task_id(task_id: str, listener_name: str) -> str:
    """The id of a listener's task for the message of task id ``task_id`` (dispatch's, the
    web side's), whoever sends it: the logs tie it to the event."""
    return f"{task_id}:{listener_name}"


def batch_task_id(task_ids: list[str], listener_name: str) -> str:
    """The id of a batch listener's task for messages of these task ids."""
    if len(task_ids) == 1:
        return listener_task_id(task_ids[0], listener_name)
    return listener_task_id(f"{task_ids[0]}+{len(task_ids)}", listener_name)


def batch_runner(
    registry: Registry, function: Callable[[list[Event]], Any], name: str
) -> Callable[[Any], Any]:
    """The body of the Celery task of the batch listener ``function``: it takes a list of
    messages (or one message: a batch of one) and calls ``function`` with their events."""
    if isinstance(function, Task):
        raise ListenerError(
            f"{function.name} is a Celery task: batch= takes a plain function, which receives a "
            "list of events (give @listener its Celery options instead)"
        )

    @functools.wraps(function)
    def run(messages: Any) -> Any:
        return run_batch(registry, name, messages, function)

    return run


def run_batch(
    registry: Registry, name: str, messages: Any, function: Callable[[list[Event]], Any]
) -> Any:
    """One run of a batch listener's task (see the module's doc)."""
    task = current_task
    request: Any = getattr(task, "request", None)
    items = [messages] if isinstance(messages, Mapping) else list(messages)
    in_worker = bool(getattr(request, "id", None)) and not getattr(request, "called_directly", True)
    if in_worker and len(items) > 1:
        delivery_info = getattr(request, "delivery_info", None) or {}
        if request.retries or delivery_info.get("redelivered"):
            logger.warning(
                "batch listener %s: batch %s of %d events came again; each event goes on alone",
                name,
                request.id,
                len(items),
            )
            _split(task, registry[name], items, retries=request.retries)
            return None
    if not registry.may_run(task, messages):
        return None
    events = [Event.from_message(decode(item)) for item in items]
    if not in_worker or len(items) == 1:
        return function(events)
    try:
        return function(events)
    except Exception as exc:
        logger.warning(
            "batch listener %s failed on batch %s of %d events (%s: %s): each event goes on alone",
            name,
            request.id,
            len(items),
            type(exc).__name__,
            exc,
        )
        _split(task, registry[name], items, retries=request.retries + 1)
        return None


def _split(task: Any, listener: Listener, items: list[Any], *, retries: int) -> None:
    # One task per event, for the attempt after the batch's: Celery's own retry of the task.
    countdown = _retry_countdown(task, retries - 1) if retries else 0
    for item in items:
        task.apply_async(
            args=(item,),
            task_id=listener_task_id(decode(item).task_id, listener.name),
            queue=listener.queue,
            countdown=countdown,
            retries=retries,
        )


def _retry_countdown(task: Any, retries: int) -> float:
    # What Celery's autoretry waits before the retry that follows attempt ``retries`` + 1.
    if task.retry_backoff:
        return float(
            get_exponential_backoff_interval(
                factor=int(task.retry_backoff),
                retries=retries,
                maximum=task.retry_backoff_max,
                full_jitter=task.retry_jitter,
            )
        )
    return float(task.default_retry_delay or 0)


@dataclass(eq=False)
class Delivery:
    """One dispatch message being handled: the task's own, or one it took after it."""

    message: Any
    only: list[str] | None = None
    retries: int = 0
    redelivered: bool = False
    task_id: str | None = None  # the dispatch task's id, when known
    tag: str | None = None  # a taken message's delivery tag
    size: int | None = None  # its message's JSON in bytes, when known
    pending: int = 0  # batches holding its events, not sent yet
    not_sent: list[str] = field(default_factory=list)  # listeners the broker did not take


@dataclass
class _Batch:
    listener: Listener
    entries: list[tuple[Delivery, Any, str]] = field(default_factory=list)
    size: int = 0  # bytes of messages


class Batches:
    """The events dispatch collects for its batch listeners; each batch is sent as one task once
    it holds ``batch`` messages or ``max_bytes`` of them (before a message that would take it
    past that), or by :meth:`send_all`.

    ``send(listener, messages, task_id)`` sends one: raising any of ``errors`` marks its
    messages' deliveries as not sent to that listener.
    """

    def __init__(
        self,
        send: Callable[[Listener, Any, str], None],
        errors: tuple[type[BaseException], ...],
        max_bytes: int = BATCH_BYTES,
    ) -> None:
        self._send = send
        self._errors = errors
        self._max_bytes = max_bytes
        self._batches: dict[str, _Batch] = {}

    def add(self, listener: Listener, delivery: Delivery, message: Any, task_id: str) -> None:
        """Keep ``message`` (of task id ``task_id``) for the batch ``listener`` wants."""
        if delivery.size is None:
            delivery.size = len(json.dumps(message, separators=(",", ":")))
        batch = self._batches.get(listener.name)
        if batch is not None and batch.size + delivery.size > self._max_bytes:
            self.send(listener.name)
        batch = self._batches.setdefault(listener.name, _Batch(listener))
        batch.entries.append((delivery, message, task_id))
        batch.size += delivery.size
        delivery.pending += 1
        if len(batch.entries) >= (listener.batch or 1) or batch.size >= self._max_bytes:
            self.send(listener.name)

    def send(self, name: str) -> None:
        """Send the batch of listener ``name`` now."""
        batch = self._batches.pop(name, None)
        if batch is None or not batch.entries:
            return
        listener = batch.listener
        messages = [message for _, message, _ in batch.entries]
        task_id = batch_task_id([task_id for _, _, task_id in batch.entries], listener.name)
        try:
            self._send(listener, messages if len(messages) > 1 else messages[0], task_id)
        except self._errors:
            logger.exception("batch %s not sent to listener %s", task_id, listener.name)
            for delivery, _, _ in batch.entries:
                if listener.name not in delivery.not_sent:
                    delivery.not_sent.append(listener.name)
        else:
            logger.info("%d events sent to batch listener %s", len(messages), listener.name)
        finally:
            for delivery, _, _ in batch.entries:
                delivery.pending -= 1

    def send_all(self) -> None:
        """Send every batch, full or not."""
        for name in list(self._batches):
            self.send(name)
