"""The Celery signals dispatch acts on, after a task's run: the end of a redelivery count
(:mod:`tasks.dispatch.bound`), and the dead letter of a task that failed for good
(:mod:`tasks.dispatch.failures`).

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
        dead_letter_failure(
            built.registry, built.dead_letters, sender, exception, args, kwargs, einfo
        )
