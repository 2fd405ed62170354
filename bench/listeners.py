"""The bench worker's listeners (NOTIFIER_LISTENERS=bench.listeners), and the raw Celery task
they are compared with. They do nothing: what is measured is what delivering an event costs."""

from __future__ import annotations

from typing import Any

from tasks import Event, app, listener
from tasks.app import consume

#: The queue of the raw Celery task, consumed by the bench worker like the listeners' queues.
RAW_QUEUE = "bench.raw"


@app.task(name="bench.raw_task", queue=RAW_QUEUE)
def raw_task(message: Any) -> None:
    """A plain Celery task that takes the same message a listener gets, and does nothing."""


consume(RAW_QUEUE)


@listener("bench_one")
def alone(event: Event) -> None:
    """The one listener of ``bench_one`` events."""


@listener("bench_three")
def first(event: Event) -> None:
    """One of the three listeners of ``bench_three`` events."""


@listener("bench_three")
def second(event: Event) -> None:
    """One of the three listeners of ``bench_three`` events."""


@listener("bench_three")
def third(event: Event) -> None:
    """One of the three listeners of ``bench_three`` events."""


@listener("bench_bulk", batch=100)
def bulk(events: list[Event]) -> None:
    """The batch listener of ``bench_bulk`` events: up to 100 of them per run, as a bulk index
    would take them."""
