"""The bound on deliveries: a listener whose whole worker dies each time it runs a message is
stopped, its message kept as a dead letter, and the Redis it counts in holds only what is in
flight.

A pool process's death already counts as an attempt (Celery's ``task_retry_on_worker_lost``);
a whole worker's death (SIGKILL, OOM) does not: the Redis transport hands the message out again
without counting. So a delivery is the task's attempt (its ``retries`` + 1) plus the
redeliveries its message had: each time the transport marks a message ``redelivered``, it is
counted in the dead letters' Redis (:meth:`tasks.dead_letters.DeadLetters.count_redelivery`)
until the message's run ends (Celery's ``task_postrun`` and ``task_failure`` signals, connected in
:mod:`tasks.dispatch.signals`). A first delivery reads and writes nothing there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis
from celery import states

from notifier.wire.logs import log_fields
from tasks.dead_letters import DeadLetters
from tasks.dispatch.delivery import queue_of, redelivered
from tasks.listeners.registry import Registry
from tasks.listeners.runs import ListenerRun

__all__ = ["EXTRA_DELIVERIES", "REDELIVERIES_HEADER", "DeliveryBound"]

logger = logging.getLogger("notifier")

#: How many deliveries of a listener's message a worker's death may add to its attempts
#: (``max_retries`` + 1) before the message goes to the dead letters. A pool process's death
#: already counts as an attempt; this bounds the deaths of a whole worker (SIGKILL, OOM), after
#: which the Redis transport hands the message out again without counting.
EXTRA_DELIVERIES = 1

#: The message header in which a listener's task sent back to its queue unrun (an ordered
#: listener whose objects were busy) carries the redeliveries its message had.
REDELIVERIES_HEADER = "notifier_redeliveries"


class DeliveryBound:
    """The bound on the deliveries of ``registry``'s listeners' messages, counted in the Redis
    of ``dead_letters`` (see the module's doc); a run wrapper (:mod:`tasks.listeners.runs`)."""

    def __init__(self, registry: Registry, dead_letters: DeadLetters) -> None:
        self.registry = registry
        self.dead_letters = dead_letters

    def __call__(self, run: ListenerRun, proceed: Callable[[ListenerRun], Any]) -> Any:
        if not self.within(run.task, run.message):
            return None
        return proceed(run)

    def within(self, task: Any, message: Any) -> bool:
        """Whether this delivery of a listener's message may run: past its attempts and
        :data:`EXTRA_DELIVERIES`, the message is dead-lettered instead."""
        request = getattr(task, "request", None)
        task_id = getattr(request, "id", None)
        if not task_id:
            return True  # called directly, not by a worker
        retries = getattr(request, "retries", None) or 0
        redeliveries = _carried(request)
        if redelivered(request) or retries:
            try:
                if redelivered(request):
                    redeliveries += self.dead_letters.count_redelivery(task_id)
                else:
                    redeliveries += self.dead_letters.redeliveries(task_id)
            except (redis.RedisError, OSError):
                return True  # cannot count: rather run it once more than lose it
        deliveries = retries + 1 + redeliveries
        limit = (getattr(task, "max_retries", None) or 0) + 1 + EXTRA_DELIVERIES
        if deliveries <= limit:
            return True
        listener = next((entry.name for entry in self.registry.of_task(task.name)), task.name)
        letter = self.dead_letters.add(
            f"delivered {deliveries} times without finishing: its worker died each time",
            message,
            listener=listener,
            attempts=deliveries - 1,
            queue=queue_of(task),
        )
        logger.error(
            "%s: its worker died each time; kept as dead letter %s",
            listener,
            letter.id,
            extra=log_fields(
                message.get("event_id") if isinstance(message, dict) else None,
                listener,
                queue_of(task),
            ),
        )
        # Its run ends here; a count left behind would lapse.
        with contextlib.suppress(redis.RedisError, OSError):
            self.dead_letters.forget_redeliveries(task_id)
        return False

    def forget(self, task: Any) -> dict[str, int]:
        """The message headers of a listener's task sent back to its queue unrun (an ordered
        listener whose objects were busy): that delivery was not an attempt, and the task sent
        back carries the redeliveries its message had, so that the bound holds. Their count in
        Redis ends with this run, as any count does."""
        request = getattr(task, "request", None)
        task_id = getattr(request, "id", None)
        redeliveries = _carried(request)
        if task_id and (redelivered(request) or getattr(request, "retries", None)):
            # When Redis is out of reach, the count stays there (unless the end of this run can
            # delete it): the task sent back adds its own redeliveries to it.
            with contextlib.suppress(redis.RedisError, OSError):
                redeliveries += self.dead_letters.redeliveries(task_id)
        return {REDELIVERIES_HEADER: redeliveries} if redeliveries else {}

    def after_run(self, task: Any, task_id: str | None, state: str | None, retval: Any) -> None:
        """Celery's ``task_postrun``: sent after each run in a pool process. A run that Celery
        retries, or that a Reject requeues, goes on: so does its count. A failure is
        :meth:`after_failure`'s."""
        requeued = state == states.REJECTED and getattr(retval, "requeue", False)
        if state in (states.RETRY, states.FAILURE) or requeued:
            return
        self.end_count(task, task_id)

    def after_failure(self, task: Any, task_id: str | None) -> None:
        """Celery's ``task_failure``: sent once a task failed for good, by its pool process, or by
        the worker for a pool process lost on the last attempt."""
        self.end_count(task, task_id)

    def end_count(self, task: Any, task_id: str | None) -> None:
        """Delete the redelivery count of a listener's message whose run ended: only a
        redelivery or a retry can have one, so a first delivery costs nothing here either."""
        request = getattr(task, "request", None)
        if not task_id or not (redelivered(request) or getattr(request, "retries", None)):
            return
        if not self.registry.of_task(getattr(task, "name", None)):
            return
        try:
            self.dead_letters.forget_redeliveries(task_id)
        except (redis.RedisError, OSError):
            logger.warning("could not delete the redelivery count of %s: it lapses", task_id)


def _carried(request: Any) -> int:
    # The redeliveries a task sent back to its queue carries (Celery's request.headers: the
    # message's headers of its own).
    headers = getattr(request, "headers", None) or {}
    count = headers.get(REDELIVERIES_HEADER) if isinstance(headers, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0
