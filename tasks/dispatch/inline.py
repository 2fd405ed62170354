"""Listeners run in dispatch: the first attempt of each listener that may run here, one after
another, in the dispatch task itself.

Each listener runs, retries and fails on its own, as its own Celery task would. Sending each
one a task of its own costs the workers a task message per listener and event (to publish,
take, acknowledge and run): measured in bench/, a worker handling three listeners that way
keeps up with about a third of the events it keeps up with for one. So the dispatch task runs
the first attempt of every listener it may, on these terms:

- **What may run here** (:func:`runs_in_dispatch`): a listener whose task would run the same
  way in dispatch. Its queue is one this worker consumes (a worker started with ``-Q`` or ``-X``
  that leaves it out sends the task, as before); it has no rate limit and no time limits of its
  own (the dispatch task's, the workers' defaults, bound the run); it keeps no order
  (``ordered=``, ``parents=``), and is no batch listener.
- **As fast as the others** (:class:`tasks.dispatch.pace.Pace`): a listener whose runs take
  longer than the budget on average gets its own task instead, so that it holds back neither
  the other listeners of the message nor the messages behind it.
- **The listener task's own first attempt**: each run goes through the tracer Celery's worker
  runs the listener's task with (:mod:`tasks.broker.tracing`), with the request its task would
  have had (its id ``<event_id>:<listener>``, its queue, no retries yet, the dispatch task as
  its parent), and a copy of the message of its own: the task's hooks are called and Celery's
  signals sent, as for its own task. A run that raises is retried as Celery retries the
  listener's task (``autoretry_for``, backoff, ``max_retries``): Celery sends the task for its
  second attempt, and from then on the listener's own task retries and fails as usual. An
  exception the listener does not retry fails the task for good, and its message is kept as a
  dead letter, as its own task's would be (tasks/dispatch/failures.py). ``Ignore`` is ignored
  quietly; ``Reject`` drops the message for that listener, or with ``requeue=True`` sends it to
  its task again. The other listeners of the message run whatever one of them did.
- **A worker killed during the runs**: the bound on deliveries counts each run as its task's
  first attempt (:class:`tasks.dispatch.bound.DeliveryBound`); the dispatch message is handed
  out again, and then each listener that may run here gets its own task for its second
  attempt: the listeners that had finished run once more (at least once, never lost).
- Only on the Celery versions whose tracer was checked (:func:`tasks.broker.internals_checked`):
  on others, every listener runs as its own task.

Beside the other internals notifier relies on: docs/internals.md, "Listeners run in dispatch".
"""

from __future__ import annotations

import copy
import logging
import marshal
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import states

from notifier.errors import ListenersNotSent
from notifier.wire.logs import log_fields
from notifier.wire.message import Message
from notifier.wire.protocol import argsrepr
from tasks.broker.tracing import Traced, trace
from tasks.broker.versions import internals_checked
from tasks.broker.worker_view import shared
from tasks.dispatch.delivery import listener_task_id
from tasks.dispatch.fan_out import SEND_ERRORS
from tasks.dispatch.pace import Pace
from tasks.dispatch.task_events import TaskEvents, events_of
from tasks.listeners.listener import Listener

__all__ = [
    "Inline",
    "Plan",
    "hand_over",
    "own_copy",
    "run_here",
    "runs_in_dispatch",
    "send_own_task",
]

logger = logging.getLogger("notifier")


def runs_in_dispatch(listener: Listener) -> bool:
    """Whether dispatch may run ``listener``'s first attempt itself, whatever its pace (see the
    module's doc)."""
    task = listener.task
    queues = task.app.amqp.queues
    consumed = queues.consume_from if queues.consume_from is not None else queues
    return (
        internals_checked()
        and listener.queue in consumed
        and listener.batch is None
        and not listener.ordered
        and not listener.parents
        and task.rate_limit is None
        # The dispatch task's time limits, the workers' defaults, bound the run.
        and task.time_limit == task.app.conf.task_time_limit
        and task.soft_time_limit == task.app.conf.task_soft_time_limit
    )


@dataclass(slots=True)
class Plan:
    """Where each listener of a message runs."""

    #: Run here, in dispatch, one after another.
    here: list[Listener] = field(default_factory=list)
    #: Sent their own task for their second attempt: their first ran here, and its worker died.
    handed_over: list[Listener] = field(default_factory=list)
    #: Sent their own task (tasks/dispatch/fan_out.py).
    sent: list[Listener] = field(default_factory=list)


class Inline:
    """Which listeners of a message dispatch runs itself, and their runs (see the module's
    doc). ``pace``: the listeners' run times, in this process."""

    def __init__(self, pace: Pace) -> None:
        self.pace = pace
        # What runs_in_dispatch says of each listener: the worker's queues and its listeners'
        # options are set once it started.
        self._may_run: dict[str, bool] = {}

    def plan(self, listeners: Sequence[Listener], *, again: bool, only: list[str] | None) -> Plan:
        """Where each of ``listeners`` (those that want a message; no batch listener) runs.

        ``again``: this dispatch is a retry or a redelivery, so the first attempts of those
        that may run here ran already, and their worker died: their own tasks take over, for
        their second attempt. A retry for some listeners (``only``) is for listeners the broker
        did not take: their tasks are sent as usual."""
        result = Plan()
        rate_limited = shared.view().rate_limited
        for listener in listeners:
            if not self.may_run(listener):
                result.sent.append(listener)
            elif again:
                # One the pace sent a task of its own had its first attempt there.
                ran_here = only is None and not self.pace.slow(listener.name)
                (result.handed_over if ran_here else result.sent).append(listener)
            elif self.pace.fits(listener.name) and listener.task.name not in rate_limited:
                # A listener rate-limited by `celery control rate_limit` gets its own task,
                # which the worker's buckets hold back.
                result.here.append(listener)
            else:
                result.sent.append(listener)
        return result

    def may_run(self, listener: Listener) -> bool:
        """:func:`runs_in_dispatch`, asked once per listener."""
        may_run = self._may_run.get(listener.name)
        if may_run is None:
            may_run = self._may_run[listener.name] = runs_in_dispatch(listener)
        return may_run


def run_here(
    message: Message,
    data: Any,
    listeners: Sequence[Listener],
    *,
    hostname: str | None = None,
    until: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[str]:
    """Run the first attempt of each of ``listeners`` on ``message`` (decoded from ``data``),
    one after another, each on its own (see the module's doc); return their names. Once
    ``clock`` passes ``until``, those left get their own tasks instead (the dispatch task's time
    limits are for the listeners that hold it, not for the next ones). Raises
    :class:`ListenersNotSent` naming those whose first or next attempt the broker did not take,
    once the others ran."""
    not_sent = []
    readable = argsrepr((data,))
    view = shared.view()
    for listener in listeners:
        events = events_of(listener.task.app)
        if until is not None and clock() >= until:
            if not send_own_task(listener, data, message.task_id, retries=0):
                not_sent.append(listener.name)
            continue
        # Each its own copy of the message, as its own task would have decoded: what one
        # listener changes in its event, the next one (and a batch holding the message) never
        # sees.
        args = (own_copy(data),)
        task_id = listener_task_id(message.task_id, listener.name)
        request = {
            "id": task_id,
            "retries": 0,
            "delivery_info": {"exchange": "", "routing_key": listener.queue},
            "hostname": hostname,
            "is_eager": False,
            "parent_id": message.task_id,
            "root_id": message.task_id,
            "argsrepr": readable,
            "kwargsrepr": "{}",
        }
        if task_id in view.revoked:
            _revoked(events, listener, message, task_id)
            continue
        events_on = events.on and listener.task.send_events
        if events_on:
            events.received(
                task_id,
                listener.task.name,
                readable,
                parent_id=message.task_id,
                root_id=message.task_id,
            )
        with shared.running(_active(request, listener)):
            traced = trace(listener.task, task_id, args, request)
        if events_on:
            events.ended(task_id, traced)
        if traced.state == states.REJECTED and not _rejected(listener, data, message, traced):
            not_sent.append(listener.name)
    if not_sent:
        raise ListenersNotSent(not_sent)
    return [listener.name for listener in listeners]


def _active(request: dict[str, Any], listener: Listener) -> dict[str, Any]:
    # What ``inspect active`` shows of the run, as Celery's Request.info(safe=True) gives it.
    return {
        "id": request["id"],
        "name": listener.task.name,
        "args": request["argsrepr"],
        "kwargs": "{}",
        "type": listener.task.name,
        "hostname": request["hostname"],
        "time_start": time.time(),
        "acknowledged": True,
        "delivery_info": request["delivery_info"],
        "worker_pid": os.getpid(),
        "parent_id": request["parent_id"],
    }


def _revoked(events: TaskEvents, listener: Listener, message: Message, task_id: str) -> None:
    # ``celery control revoke <event_id>:<listener>``: the run is skipped, as the worker skips
    # a revoked task's message.
    logger.info(
        "listener %s: its run on event %s was revoked",
        listener.name,
        message.event_id,
        extra=log_fields(message.event_id, listener.name, listener.queue),
    )
    if events.on:
        events.send("task-revoked", uuid=task_id, terminated=False, signum=None, expired=False)


def own_copy(data: Any) -> Any:
    """A deep copy of ``data``, a message as JSON decoded it (dicts, lists, strings, numbers,
    booleans, None)."""
    try:
        # A few µs for a 1 KB message: a fifth of what copy.deepcopy takes.
        return marshal.loads(marshal.dumps(data))
    except ValueError:  # something JSON does not decode to
        return copy.deepcopy(data)


def _rejected(listener: Listener, data: Any, message: Message, traced: Traced) -> bool:
    # A Reject: raised by Task.retry when the broker did not take the next attempt (its reason
    # the broker's error), or by the listener, for Celery to drop the message or requeue it.
    # False: the listener's next attempt is not sent.
    reason = getattr(traced.exception, "reason", None)
    if isinstance(reason, SEND_ERRORS):
        logger.error(
            "event %s not sent to listener %s: %s",
            message.event_id,
            listener.name,
            reason,
            extra=log_fields(message.event_id, listener.name, listener.queue),
        )
        return False
    if not getattr(traced.exception, "requeue", False):
        return True
    # A requeued message is delivered again with the retries it had: none.
    return send_own_task(listener, data, message.task_id, retries=0)


def hand_over(listeners: Sequence[Listener], data: Any, task_id: str) -> list[str]:
    """Send each of ``listeners``, whose first attempt on the message of ``task_id`` ran in
    dispatch and ended with its worker, its own task for the second; return their names.
    Raises :class:`ListenersNotSent` naming those the broker did not take, once the others have
    it."""
    not_sent = []
    for listener in listeners:
        if send_own_task(listener, data, task_id, retries=1):
            logger.warning(
                "listener %s: its first attempt on %s may have run in a dispatch that did not "
                "finish (its worker died or stopped); its own task tries again",
                listener.name,
                task_id,
                extra=log_fields(task_id, listener.name, listener.queue),
            )
        else:
            not_sent.append(listener.name)
    if not_sent:
        raise ListenersNotSent(not_sent)
    return [listener.name for listener in listeners]


def send_own_task(listener: Listener, data: Any, task_id: str, *, retries: int) -> bool:
    """Send ``listener`` its own task for the message of ``task_id``, as its attempt
    ``retries`` + 1; False (and logged) when the broker does not take it."""
    try:
        listener.task.apply_async(
            args=(data,),
            task_id=listener_task_id(task_id, listener.name),
            queue=listener.queue,
            retries=retries,  # type: ignore[call-arg]  # a message option
        )
    except SEND_ERRORS:
        logger.exception(
            "event %s not sent to listener %s",
            task_id,
            listener.name,
            extra=log_fields(task_id, listener.name, listener.queue),
        )
        return False
    return True
