"""Celery's task events for what dispatch runs and sends itself, so that Flower and ``celery
events`` see one task per listener run whichever path ran it.

Celery's worker sends a task's events from its main process: ``task-received`` when the
consumer gets the message, ``task-started`` when a pool process takes it, then
``task-succeeded``, ``task-failed``, ``task-retried`` or ``task-rejected``. A listener run inside
dispatch (tasks/dispatch/inline.py), a dispatch message taken by another dispatch run
(tasks/broker/taking.py), and a listener task the taker writes (``task-sent``, with
``task_send_sent_event``) never pass through it. :class:`TaskEvents` sends those events from the
pool process, with the same fields, when the worker sends task events (``-E``, the
``worker_send_task_events`` setting, or ``celery control enable_events``: the main process's
view, tasks/broker/worker_view.py). With task events off, it costs a read of a shared integer.

An event the broker does not take is lost, as Celery's own are (its dispatcher's buffer is
off): events are for watching, never for delivery.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any

import redis
from celery import Celery, current_task, states
from celery.utils.saferepr import saferepr
from kombu.exceptions import KombuError

from tasks.broker.tracing import Traced
from tasks.broker.worker_view import WorkerView, shared

__all__ = ["SEND_ERRORS", "TaskEvents", "events_of"]

logger = logging.getLogger("notifier")

#: What the broker raises when it does not take an event.
SEND_ERRORS = (KombuError, redis.RedisError, OSError)


class TaskEvents:
    """The task events of ``app``'s fast paths, sent from this process (see the module's doc).
    ``view``: the main process's (task events on or off)."""

    def __init__(self, app: Celery, view: WorkerView = shared) -> None:
        self.app = app
        self.view = view
        self._dispatcher: Any = None
        self._pid = 0
        self._failing = False  # the last event was not sent

    @property
    def on(self) -> bool:
        """Whether the worker sends task events."""
        return self.view.view().events

    def send(self, type_: str, **fields: Any) -> None:
        """Send the event ``type_`` (``task-...``) of this worker."""
        try:
            dispatcher = self._dispatcher_for()
            dispatcher.send(type_, **fields)
        except SEND_ERRORS as exc:  # the broker away: watching is not delivery
            if not self._failing:
                logger.warning("task events not sent (the first: %s): %s", type_, exc)
            self._failing = True
            self._drop_dispatcher()
        else:
            if self._failing:
                logger.warning("task events are sent again")
            self._failing = False

    def _drop_dispatcher(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            try:
                dispatcher.close()
                dispatcher.connection.release()
            except SEND_ERRORS:
                pass  # a connection already gone

    def received(
        self,
        task_id: str,
        name: str,
        argsrepr: str,
        *,
        parent_id: str | None,
        root_id: str | None,
        retries: int = 0,
    ) -> None:
        """``task-received`` and ``task-started``: a pool process of this one takes the task."""
        self.send("task-received", **_task(task_id, name, argsrepr, parent_id, root_id, retries))
        self.send("task-started", uuid=task_id)  # the dispatcher adds its pid

    def ended(self, task_id: str, traced: Traced) -> None:
        """The event of how the run of ``task_id`` ended, as Celery's request sends it."""
        exception = traced.exception
        if traced.state == states.SUCCESS:
            self.send(
                "task-succeeded",
                uuid=task_id,
                result=saferepr(traced.retval),
                runtime=traced.runtime,
            )
        elif traced.state == states.RETRY:
            cause = getattr(exception, "exc", None) or exception
            self.send(
                "task-retried",
                uuid=task_id,
                exception=saferepr(cause),
                traceback=_traceback(cause),
            )
        elif traced.state == states.REJECTED:
            requeue = bool(getattr(exception, "requeue", False))
            self.send("task-rejected", uuid=task_id, requeue=requeue)
        elif traced.state == states.FAILURE:
            self.send(
                "task-failed",
                uuid=task_id,
                exception=saferepr(exception),
                traceback=_traceback(exception),
            )
        # IGNORED: Celery sends nothing either.

    def sent(
        self,
        task_id: str,
        name: str,
        argsrepr: str,
        queue: str,
        *,
        parent_id: str | None,
        root_id: str | None,
        retries: int = 0,
    ) -> None:
        """``task-sent``, as Celery's ``send_task`` sends it with ``task_send_sent_event`` (with
        task events on or not)."""
        if not self.sends_sent:
            return
        self.send(
            "task-sent",
            **_task(task_id, name, argsrepr, parent_id, root_id, retries),
            queue=queue,
            exchange="",
            routing_key=queue,
        )

    @property
    def sends_sent(self) -> bool:
        """Whether :meth:`sent` sends anything: Celery's ``task_send_sent_event``."""
        return bool(self.app.conf.task_send_sent_event)

    def _dispatcher_for(self) -> Any:
        # One per process, made in it: a connection is never shared over a fork. Its events
        # name the worker that runs the task sending them (dispatch, or a listener in it).
        if self._dispatcher is None or self._pid != os.getpid():
            hostname = getattr(getattr(current_task, "request", None), "hostname", None)
            connection = self.app.connection_for_write()
            self._dispatcher = self.app.events.Dispatcher(
                connection, hostname=hostname, enabled=True, buffer_while_offline=False
            )
            self._pid = os.getpid()
        return self._dispatcher


def _task(
    task_id: str,
    name: str,
    argsrepr: str,
    parent_id: str | None,
    root_id: str | None,
    retries: int,
) -> dict[str, Any]:
    # The fields that task-received and task-sent give of the task, as Celery's do: no eta, no
    # expiry, no keyword arguments.
    return {
        "uuid": task_id,
        "name": name,
        "args": argsrepr,
        "kwargs": "{}",
        "root_id": root_id,
        "parent_id": parent_id,
        "retries": retries,
        "eta": None,
        "expires": None,
    }


def _traceback(exception: BaseException | None) -> str:
    if exception is None:
        return ""
    return "".join(traceback.format_exception(exception))


_events: dict[int, TaskEvents] = {}


def events_of(app: Celery) -> TaskEvents:
    """``app``'s task events in this process."""
    events = _events.get(id(app))
    if events is None or events.app is not app:
        events = _events[id(app)] = TaskEvents(app)
    return events
