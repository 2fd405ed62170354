"""The Celery signals dispatch acts on, after a task's run: the end of a redelivery count
(:mod:`tasks.dispatch.bound`), the dead letter of a task that failed for good
(:mod:`tasks.dispatch.failures`), and, when the worker serves metrics, each listener run's
time and outcome (:mod:`tasks.metrics`).

Celery sends them in the process that ran the task (or, for a pool process lost on its last
attempt, in the worker's main process), for every task of that process. Each handler finds the
collaborators :func:`tasks.wiring.wire` bound on the sender's app; a task of an app that was
never wired is none of dispatch's (its listeners' runs raise before they start), and is left
alone.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from tasks.dispatch.failures import dead_letter_failure
from tasks.metrics import WorkerMetrics
from tasks.wiring import wired_or_none

__all__: list[str] = []


@signals.task_postrun.connect
def _end_count_after_run(
    sender: Any = None,
    task_id: str | None = None,
    state: str | None = None,
    retval: Any = None,
    **signal_kwargs: Any,
) -> None:
    # Sent after each run in a pool process.
    built = wired_or_none(getattr(sender, "app", None))
    if built is not None:
        built.bound.after_run(sender, task_id, state, retval)


@signals.task_failure.connect
def _end_count_after_failure(
    sender: Any = None, task_id: str | None = None, **signal_kwargs: Any
) -> None:
    # Sent once a task failed for good.
    built = wired_or_none(getattr(sender, "app", None))
    if built is not None:
        built.bound.after_failure(sender, task_id)


@signals.task_failure.connect
def _dead_letter_failure(
    sender: Any = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **signal_kwargs: Any,
) -> None:
    # Sent once a task failed for good (its retries, if any, are spent).
    built = wired_or_none(getattr(sender, "app", None))
    if built is not None:
        kept = dead_letter_failure(
            built.registry, built.dead_letters, sender, exception, args, kwargs, einfo
        )
        if built.metrics is not None:
            for listener, letter in kept.items():
                if listener is not None:
                    built.metrics.outcome(listener, "dead_letter" if letter else "failure")


# -- metrics: every run of a listener's task, in dispatch or as its own task -------------------


def _metrics_of(sender: Any) -> tuple[WorkerMetrics, str] | None:
    # The worker's metrics and the listener whose task ``sender`` is; None for any other task,
    # or when the worker serves no metrics.
    built = wired_or_none(getattr(sender, "app", None))
    if built is None or built.metrics is None:
        return None
    listener = built.metrics.listener_of(built.registry, getattr(sender, "name", None))
    return None if listener is None else (built.metrics, listener)


@signals.task_prerun.connect
def _time_run(
    sender: Any = None, task_id: str | None = None, args: Any = None, **signal_kwargs: Any
) -> None:
    found = _metrics_of(sender)
    if found is not None and task_id is not None:
        metrics, listener = found
        retries = getattr(getattr(sender, "request", None), "retries", 0) or 0
        metrics.run_started(listener, task_id, args[0] if args else None, retries)


@signals.task_postrun.connect
def _observe_run(sender: Any = None, task_id: str | None = None, **signal_kwargs: Any) -> None:
    found = _metrics_of(sender)
    if found is not None and task_id is not None:
        found[0].run_ended(task_id)


@signals.task_success.connect
def _count_success(sender: Any = None, **signal_kwargs: Any) -> None:
    found = _metrics_of(sender)
    if found is not None:
        found[0].outcome(found[1], "success")


@signals.task_retry.connect
def _count_retry(sender: Any = None, **signal_kwargs: Any) -> None:
    found = _metrics_of(sender)
    if found is not None:
        found[0].outcome(found[1], "retry")
