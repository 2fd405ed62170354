"""The baseline of the worker rows: a plain Celery app, not notifier's, with the settings of
notifier's workers that decide what a task costs (:data:`SAME_SETTINGS`, read from
tasks/defaults.py, so that they cannot drift apart) and one task that counts the message it
takes and does nothing else. bench/drain.py starts it as ``celery -A bench.raw_celery worker``,
with the concurrency and log level of notifier's bench worker; its broker is
``$CELERY_BROKER_URL``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from bench.counting import RAW_TASK, count
from tasks.defaults import Configuration

#: The queue the raw Celery task is sent to, the only one its worker consumes.
RAW_QUEUE = "bench.raw"

#: What notifier's workers set (tasks/defaults.py) and this app sets alike.
SAME_SETTINGS: dict[str, Any] = {
    name: Configuration()[name]
    for name in (
        "task_serializer",
        "accept_content",
        "task_ignore_result",
        "task_acks_late",
        "task_reject_on_worker_lost",
        "worker_prefetch_multiplier",
    )
}

app = Celery("bench_raw")
app.conf.update(SAME_SETTINGS, task_default_queue=RAW_QUEUE)


@app.task(name=RAW_TASK)
def raw_task(message: Any) -> None:
    """A plain Celery task that takes the message a listener gets, and counts it."""
    count(RAW_TASK)
