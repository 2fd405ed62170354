"""The run wrapper of ordered listeners: each run claims its event's objects from the order guard
(:mod:`tasks.listeners.ordered`), and the listener receives only the changes newer than those it
applied.

A run whose objects another run holds for longer than the guard waits goes back to its queue,
a little later, as the same task (same id, same attempts), when a worker runs it; a direct call
raises :class:`~notifier.errors.ObjectsBusy` instead, for its caller to decide.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from notifier.errors import ObjectsBusy
from tasks.listeners.ordered import OrderGuard
from tasks.listeners.runs import ListenerRun

__all__ = ["OrderedRuns"]

logger = logging.getLogger("notifier")


def _no_headers(task: Any) -> Mapping[str, Any] | None:
    return None


class OrderedRuns:
    """Runs ordered listeners through ``guard``; the others as they are.

    ``on_defer(task)``: the message headers a task sent back to its queue carries, because its
    objects were busy (a delivery that is not an attempt: the worker's gives the redeliveries
    its message had, :meth:`tasks.dispatch.bound.DeliveryBound.forget`).
    """

    def __init__(
        self,
        guard: OrderGuard,
        on_defer: Callable[[Any], Mapping[str, Any] | None] = _no_headers,
    ) -> None:
        self.guard = guard
        self.on_defer = on_defer

    def __call__(self, run: ListenerRun, proceed: Callable[[ListenerRun], Any]) -> Any:
        listener = run.listener
        if not listener.ordered:
            return proceed(run)
        event = run.decoded()
        guard = self.guard
        try:
            claim = guard.claim(listener.name, event, parents=listener.parents)
        except ObjectsBusy:
            request = run.request
            if request is None or not getattr(request, "id", None):
                raise  # a direct call: the caller decides
            self._defer(run)
            return None
        new_event = claim.new_event
        if new_event is None:
            guard.release(claim, applied=False)
            logger.info(
                "%s: event %s skipped: no change newer than applied", listener.name, event.event_id
            )
            return None
        try:
            with guard.holding(claim):
                result = proceed(replace(run, event=new_event, guarded=True))
        except BaseException:
            guard.release(claim, applied=False)
            raise
        guard.release(claim, applied=True)
        return result

    def _defer(self, run: ListenerRun) -> None:
        # Back to the listener's queue, a little later, as the same task (same id, same
        # attempts): waiting here would keep a pool process that the run holding the objects
        # may need, when that run is a redelivery.
        task, listener = run.task, run.listener
        request = task.request
        delay = random.uniform(0.5, 2.0)
        headers = self.on_defer(task)
        task.apply_async(
            args=request.args,
            kwargs=request.kwargs,
            task_id=request.id,
            queue=listener.queue,
            countdown=delay,
            retries=request.retries,
            **({"headers": headers} if headers else {}),
        )
        logger.info(
            "%s: task %s sent back to %s for %.1f s, its objects being busy",
            listener.name,
            request.id,
            listener.queue,
            delay,
        )
