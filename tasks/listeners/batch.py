"""Batch listeners: ``@listener("article", batch=100)`` receives a list of events per run.

A listener that does bulk work (a search engine's bulk index, one SQL statement for many rows)
costs about as much for a hundred events as for one. Dispatch collects, over its own message
and the messages it takes after it (tasks/broker/taking.py), the events each batch listener wants,
and sends one task per batch listener with their messages (:mod:`tasks.dispatch.batches`), at
most ``batch`` of them and about a mebibyte of JSON (one message larger than that travels alone):
its id is
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
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from celery import Task, current_task
from celery.utils.time import get_exponential_backoff_interval

from notifier.errors import ListenerError
from notifier.wire.message import decode
from tasks.dispatch.delivery import listener_task_id
from tasks.listeners.event import Event

if TYPE_CHECKING:
    from tasks.listeners.registry import Listener, Registry
    from tasks.listeners.runs import ListenerRun

__all__ = ["MAX_BATCH", "batch_runner", "check_batch", "run_batch"]

logger = logging.getLogger("notifier")

#: The largest batch: a batch travels as one task message, and dispatch takes at most this many
#: messages in one run.
MAX_BATCH = 1000


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
    return registry.run(
        name, task, messages, lambda run: _run_whole(run, items, function, in_worker)
    )


def _run_whole(
    run: ListenerRun, items: list[Any], function: Callable[[list[Event]], Any], in_worker: bool
) -> Any:
    # The batch's run, once the run wrappers let it (the bound on deliveries).
    events = [Event.from_message(decode(item)) for item in items]
    if not in_worker or len(items) == 1:
        return function(events)
    request = run.request
    name = run.listener.name
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
        _split(run.task, run.listener, items, retries=request.retries + 1)
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
