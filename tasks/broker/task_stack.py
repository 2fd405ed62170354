"""Running a task's body inside another task, with Celery's ``current_task`` set to it.

Dispatch runs a listener's first attempt itself (tasks/dispatch/inline.py). During that run,
Celery's ``current_task`` must be the listener's task, as it is in the listener's own task:
``Task.retry`` (``autoretry_for``) and the listener's own code read it. Celery sets it from its
task stack, which its worker pushes around each task's run, and has no public way to push
one: :func:`running` pushes onto it as the worker does.

Relied on, checked on Celery 5.7.0: ``celery._state._task_stack`` (a ``LocalStack`` whose top is
``current_task``), pushed and popped by ``celery.app.trace`` around each run. Only on the
versions :func:`tasks.broker.internals_checked` accepts: on others, dispatch runs no listener
inline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import _state

__all__ = ["running"]


@contextmanager
def running(task: Any) -> Iterator[None]:
    """Have Celery's ``current_task`` be ``task`` while the block runs (push and pop its task
    stack, as Celery's worker does around a task's run)."""
    stack = _state._task_stack  # type: ignore[attr-defined]  # private: not in celery-types
    stack.push(task)
    try:
        yield
    finally:
        stack.pop()
