"""The baseline of the worker rows: a plain Celery app, not notifier's, with the settings of
notifier's workers that decide what a task costs (:data:`SAME_SETTINGS`, checked against
tasks/defaults.py by bench/workers.py) and one task that counts the message it takes and does
nothing else. bench/drain.py starts it as ``celery -A bench.raw_celery worker``, with the
concurrency and log level of notifier's bench worker; its broker is ``$CELERY_BROKER_URL``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from bench.counting import RAW_TASK, count

#: The queue the raw Celery task is sent to, the only one its worker consumes.
RAW_QUEUE = "bench.raw"

#: What notifier's workers set (tasks/defaults.py) and this app sets alike.
SAME_SETTINGS: dict[str, Any] = {
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_ignore_result": True,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}

app = Celery("bench_raw")
app.conf.update(SAME_SETTINGS, task_default_queue=RAW_QUEUE)


@app.task(name=RAW_TASK)
def raw_task(message: Any) -> None:
    """A plain Celery task that takes the message a listener gets, and counts it."""
    count(RAW_TASK)
