"""A message that only one listener wants: dispatch runs that listener's first attempt itself.

Each listener runs as its own Celery task so that it runs, retries and fails on its own, apart
from the others. A message that one listener alone wants has no others to be kept apart from;
sending it a task of its own would only double what the event costs the workers (a second
task message to publish, take, acknowledge and run: measured in bench/, a worker handles about
half as many events). So the dispatch task runs it, on these terms:

- Only where the listener's own task would run the same way: in a worker that consumes the
  listener's queue (a worker started with ``-Q`` or ``-X`` that leaves the queue out sends the
  task, as before), for a listener whose task adds nothing around its run (a plain function,
  or a plain ``@app.task``: no hooks of its own), without a rate limit or time limits of its
  own, that does not keep order (``ordered=``, ``parents=``).
- The run is the listener task's first attempt, with the request its task would have had (its
  id ``<event_id>:<listener>``, its queue, no retries yet): the bound on deliveries
  (:class:`tasks.dispatch.bound.DeliveryBound`) counts it, so a worker that dies during it
  redelivers the dispatch message, which runs the listener again until it has used its attempts,
  and then dead-letters it.
- A run that raises is retried as Celery retries the listener's task (``autoretry_for``,
  backoff, ``max_retries``): Celery sends the task for its second attempt, and from then on the
  listener's own task retries and fails as usual. An exception the listener does not retry
  keeps the message as a dead letter at once, with the traceback, as its task would.
- A listener that raises Celery's ``Ignore`` is ignored quietly, as its task would be; one that
  raises ``Reject`` (and does not retry it) has the message dropped, or with ``requeue=True``
  sent to its task again.
- Celery's signals about the listener's task (``task_prerun``, ``task_success``...) are not
  sent for this first attempt; the dispatch task's are.
- Only on the Celery versions whose task stack was checked (:mod:`tasks.broker.task_stack`,
  :func:`tasks.broker.versions.internals_checked`): on others, every listener runs as its own
  task.

Beside the other internals notifier relies on: docs/internals.md,
"A lone listener runs in dispatch".
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from notifier.errors import ListenersNotSent
from notifier.wire.message import Message
from tasks.broker.task_stack import running
from tasks.broker.versions import internals_checked
from tasks.dead_letters import DeadLetters
from tasks.dispatch.delivery import listener_task_id
from tasks.dispatch.fan_out import SEND_ERRORS
from tasks.listeners.registry import Listener

__all__ = ["run_alone", "runs_in_dispatch"]

logger = logging.getLogger("notifier")

# What Celery's worker calls around a task's run, besides the run: a task whose class changes
# none of these runs the same in dispatch.
_HOOKS = ("__call__", "before_start", "on_success", "on_failure", "on_retry", "after_return")


def runs_in_dispatch(listener: Listener) -> bool:
    """Whether dispatch may run ``listener``'s first attempt itself (see the module's doc)."""
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
        and all(getattr(type(task), hook) is getattr(Task, hook) for hook in _HOOKS)
    )


def run_alone(
    message: Message,
    data: Any,
    listeners: list[Listener],
    dead_letters: DeadLetters,
    *,
    only: list[str] | None = None,
    again: bool = False,
) -> list[str] | None:
    """Run the one listener of ``listeners`` (those that want ``message``, decoded from
    ``data``, of those named in ``only``; batch listeners left out), if it alone wants it and
    may run here; return its name. ``None``: dispatch sends the listener tasks as usual. Batch
    listeners never run here, and their own tasks keep them apart from this one.

    ``again``: this dispatch is a retry or a redelivery, so the first attempt ran here already
    and its worker died: the listener's own task takes over, for its second attempt.
    """
    if len(listeners) != 1 or not runs_in_dispatch(listeners[0]):
        return None
    [listener] = listeners
    task = listener.task
    if again:
        if only is not None:
            return None  # a listener dispatch could not send to: send it as usual
        _hand_over(listener, data, message.task_id)
        return [listener.name]
    # The request the listener's task would run with: its retries, the delivery guard and
    # Celery's retry (its queue, its attempts) read it, and current_task is the listener's.
    task.push_request(
        id=listener_task_id(message.task_id, listener.name),
        args=[data],
        kwargs={},
        retries=0,
        delivery_info={"exchange": "", "routing_key": listener.queue},
        called_directly=False,
    )
    # Celery's current task is the listener's until the run's end is dealt with (a requeue's
    # task has the listener's task as its parent, as it would from the listener's own task).
    with running(task):
        try:
            task.run(data)
        except Retry:
            # Celery sent the listener's task for its next attempt, and logged why.
            logger.warning(
                "listener %s failed on event %s in dispatch: its task tries again",
                listener.name,
                message.event_id,
            )
        except Ignore:
            # Celery's "ignore this task" (raised by the listener, or by Task.replace): no
            # failure.
            logger.info("listener %s ignored event %s in dispatch", listener.name, message.event_id)
        except Reject as exc:
            # Task.retry's Reject: its task could not be sent (celery-types lacks Reject's
            # attributes).
            if isinstance(getattr(exc, "reason", None), SEND_ERRORS):
                logger.error(
                    "event %s not sent to listener %s: %s", message.event_id, listener.name, exc
                )
                raise ListenersNotSent([listener.name]) from None
            # The listener's own: Celery would drop the message, or requeue it (its task, again).
            logger.warning(
                "listener %s rejected event %s: %s", listener.name, message.event_id, exc
            )
            if getattr(exc, "requeue", False):
                _requeue(listener, data, message.task_id)
        except Exception as exc:
            # Not retried (autoretry_for, dont_autoretry_for, max_retries): failed for good.
            letter = dead_letters.add(
                f"{type(exc).__name__}: {exc}",
                data,
                listener=listener.name,
                attempts=1,
                queue=listener.queue,
                traceback=traceback.format_exc(),
            )
            logger.error("%s failed for good: kept as dead letter %s", listener.name, letter.id)
        else:
            logger.info(
                "event %s (%s %s) run by listener %s in dispatch",
                message.event_id,
                message.action,
                message.resource_name,
                listener.name,
            )
        finally:
            task.pop_request()
    return [listener.name]


def _hand_over(listener: Listener, data: Any, task_id: str) -> None:
    # The attempt that ran in dispatch, whose worker died, was the first.
    _send(listener, data, task_id, retries=1)
    logger.warning(
        "listener %s: its first attempt on %s ended with its worker; its task tries again",
        listener.name,
        task_id,
    )


def _requeue(listener: Listener, data: Any, task_id: str) -> None:
    # A requeued message is delivered again with the retries it had: none.
    _send(listener, data, task_id, retries=0)


def _send(listener: Listener, data: Any, task_id: str, *, retries: int) -> None:
    try:
        listener.task.apply_async(
            args=(data,),
            task_id=listener_task_id(task_id, listener.name),
            queue=listener.queue,
            retries=retries,  # type: ignore[call-arg]  # a message option
        )
    except SEND_ERRORS:
        logger.exception("event %s not sent to listener %s", task_id, listener.name)
        raise ListenersNotSent([listener.name]) from None
