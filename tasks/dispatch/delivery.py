"""What dispatch knows of one delivery: the state of a message being handled, the id of each
listener's task for it, and what a running task's request says of where it came from.

A listener's task id is ``<task id>:<listener>`` whoever sends it (dispatch, its inline run, a
batch going on event by event, ``notifier-dead-letters replay``), so that the logs and the
redelivery counts (tasks/dispatch/bound.py) tie every run to its event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Delivery", "listener_task_id", "queue_of", "redelivered"]


@dataclass(eq=False)
class Delivery:
    """One dispatch message being handled: the task's own, or one it took after it."""

    message: Any
    only: list[str] | None = None
    retries: int = 0
    redelivered: bool = False
    task_id: str | None = None  # the dispatch task's id, when known
    tag: str | None = None  # a taken message's delivery tag
    size: int | None = None  # its message's JSON in bytes, when known
    pending: int = 0  # batches holding its events, not sent yet
    not_sent: list[str] = field(default_factory=list)  # listeners the broker did not take
    dead_letter: str | None = None  # the id of the dead letter that keeps it, if malformed
    headers: Any = None  # a taken message's headers (its trace context among them)


def listener_task_id(task_id: str, listener_name: str) -> str:
    """The id of a listener's task for the message of task id ``task_id`` (dispatch's, the
    web side's), whoever sends it: the logs tie it to the event."""
    return f"{task_id}:{listener_name}"


def queue_of(task: Any) -> str | None:
    """The queue the running ``task`` was taken from: Celery's routing key, our queue names."""
    delivery_info = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    queue = delivery_info.get("routing_key")
    return queue if isinstance(queue, str) else None


def redelivered(request: Any) -> bool:
    """Whether the Redis transport handed this request's message out again (its worker died
    holding it)."""
    # kombu's Redis transport marks a message it restores to its queue (its properties'
    # delivery_info; checked with kombu 5.7), and Celery's request passes the mark on.
    delivery_info = getattr(request, "delivery_info", None) or {}
    return bool(delivery_info.get("redelivered"))
