"""The dispatch task, ``notifier.dispatch``: it receives each message and runs every listener
that wants it.

A thin task, as Celery's own guide has them: it unpacks Celery's request into a
:class:`~tasks.dispatch.delivery.Delivery`, runs a :class:`~tasks.dispatch.run.DispatchRun` over
it (and over the messages it takes after it) with the collaborators :func:`tasks.wiring.wire`
built for its app, and retries, with :func:`~tasks.dispatch.retries.dispatch_countdown`, for
the listeners the broker did not take. Importing this module registers the task, and connects
the signal handlers of :mod:`tasks.dispatch.signals`.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from notifier.errors import ListenersNotSent
from notifier.wire.message import DISPATCH_TASK
from tasks.app import app
from tasks.dispatch import signals as _signals  # noqa: F401  (connects the signal handlers)
from tasks.dispatch.delivery import Delivery, queue_of
from tasks.dispatch.failures import KeptAsDeadLetter
from tasks.dispatch.retries import DISPATCH_RETRIES, dispatch_countdown
from tasks.dispatch.run import DispatchRun
from tasks.wiring import wired

__all__ = ["DISPATCH_RETRIES", "dispatch", "dispatch_countdown"]


# A pool process lost while running a listener's first attempt (tasks/dispatch/inline.py) has
# dispatch retried at once, as the listener's own task would be, not after Celery's default
# 3 minutes.
# Its request, in the worker's main process, names the listener it runs (inspect active).
@app.task(
    name=DISPATCH_TASK,
    bind=True,
    max_retries=DISPATCH_RETRIES,
    default_retry_delay=0,
    Request="tasks.broker.worker_view:DispatchRequest",
)
def dispatch(self: Task[Any, Any], message: Any, only: list[str] | None = None) -> list[str]:
    """Run every listener that wants ``message``; then take the next dispatch messages of its
    queue and do the same for each (tasks/broker/taking.py); try again for the listeners it could
    not reach."""
    built = wired(self.app)
    delivery_info = getattr(self.request, "delivery_info", None) or {}
    own = Delivery(
        message,
        only,
        retries=self.request.retries or 0,
        redelivered=bool(delivery_info.get("redelivered")),
        task_id=self.request.id,
    )
    queue = queue_of(self)
    run = DispatchRun(
        built.registry,
        built.dead_letters,
        queue,
        built.taker if queue is not None else None,
        coverage=built.coverage,
        inline=built.inline,
        dispatch=self,
        hostname=self.request.hostname,
        linger=built.linger,
        metrics=built.metrics,
    )
    try:
        sent = run.handle(own)
        if not own.not_sent:
            run.take_more()
        run.finish()
    finally:
        run.give_up()
    if own.not_sent:
        countdown = dispatch_countdown(self.request.retries)
        exc = ListenersNotSent(own.not_sent)
        raise self.retry(kwargs={"only": own.not_sent}, countdown=countdown, exc=exc) from None
    if own.dead_letter is not None:
        # Not a success to Celery's tools (Flower, events, result): its message is rejected,
        # which the broker drops, as it is kept in the dead letters.
        reason = f"a malformed message, kept as dead letter {own.dead_letter}"
        raise KeptAsDeadLetter(reason, requeue=False)
    return sent
