"""Running a listener task's body inside the dispatch task, as Celery's worker runs a task.

Dispatch runs the first attempt of the listeners it may run itself (tasks/dispatch/inline.py).
Each such run must be what the listener's own task would be in the worker: the same request
pushed (its id, its queue, its attempts), Celery's ``current_task`` the listener's (which
``Task.retry``, ``autoretry_for`` and the listener's own code read), the task's hooks called,
and Celery's signals sent (``task_prerun``, ``task_success``, ``task_retry``, ``task_failure``,
``task_postrun``), so that what is built on them (the dead letters of a listener that failed for
good, tasks/dispatch/signals.py; tracing and metrics built on the signals) sees every run,
whichever path ran it. Celery's worker gets all of that from the tracer it builds for each task;
:func:`trace` runs the listener's task through that same tracer. What the worker's main process
does around a task it received (its task events, what ``inspect active`` shows) is done by
tasks/dispatch/task_events.py and tasks/broker/worker_view.py.

Relied on, checked on Celery 5.7.0: ``celery.app.trace.trace_task`` (in that module's
``__all__``) runs a task's tracer (``Task.__trace__``, which the worker's pool process builds
for every task at its start; built here when missing), and it nests: run inside another task's
run, it pushes the listener's task and request onto Celery's stacks and pops them when it
returns, leaving the dispatch task's as they were; it returns ``(retval, info, runtime, retstr)``
where ``info`` is None after a success, else a ``TraceInfo`` whose ``state`` and ``retval`` (the
exception) say how the run ended; a ``Reject`` raised by one of the task's hooks it raises.
Only on the versions :func:`tasks.broker.internals_checked` accepts: on others, dispatch runs
no listener inline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import states
from celery.app.trace import trace_task
from celery.exceptions import Reject

__all__ = ["Traced", "trace"]


@dataclass(frozen=True, slots=True)
class Traced:
    """How one traced run of a task ended."""

    #: Celery's state of the run: SUCCESS, RETRY, FAILURE, IGNORED or REJECTED.
    state: str
    #: What ended it, unless it succeeded: the task's exception, Celery's Retry, Ignore or Reject.
    exception: BaseException | None = None
    #: What the task returned, after a success.
    retval: Any = None
    #: How long the run took, in seconds, as Celery's tracer measured it.
    runtime: float = 0.0


def trace(task: Any, task_id: str, args: tuple[Any, ...], request: dict[str, Any]) -> Traced:
    """Run ``task`` with ``args`` as Celery's worker runs it, under ``request`` (the message's
    request: its ``id`` is ``task_id``, its ``delivery_info``, its ``retries``)."""
    try:
        retval, info, runtime, _retstr = trace_task(
            task, task_id, args, {}, request, app=task.app, hostname=request.get("hostname")
        )
    except Reject as exc:
        # Raised by a hook of the task (on_success, after_return): Celery's tracer passes it on,
        # for the worker to reject the task's message. Here, the listener's run alone ends so.
        return Traced(states.REJECTED, exc)
    if info is None:
        return Traced(states.SUCCESS, retval=retval, runtime=runtime or 0.0)
    exception = info.retval if isinstance(info.retval, BaseException) else None
    return Traced(info.state, exception, runtime=runtime or 0.0)
