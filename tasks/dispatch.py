"""Dispatch: the task that receives each message and runs every matching listener.

Each matching listener runs as its own Celery task, so one that fails neither blocks nor
re-runs the others. A message that does not follow the wire contract, and a listener that
failed its last attempt, end in the dead-letter store.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from celery import signals

from notifier.errors import MalformedMessage
from notifier.message import DISPATCH_TASK, decode
from tasks.app import app, consume
from tasks.dead_letters import DeadLetters
from tasks.registry import Registry

__all__ = ["dead_letters", "dispatch", "fan_out", "registry"]

logger = logging.getLogger("notifier")

#: Every listener of this worker, registered by ``@listener``.
registry = Registry(app, on_new_queue=consume)


@cache
def dead_letters() -> DeadLetters:
    """The dead-letter store of this worker process."""
    return DeadLetters.from_url(app.conf.notifier_dead_letters_url)


def fan_out(data: Any, registry: Registry, dead_letters: DeadLetters) -> list[str]:
    """Send the message ``data`` to every listener of ``registry`` that wants it.

    Return the names of those listeners. A malformed message is dead-lettered with the reason.
    """
    try:
        message = decode(data)
    except MalformedMessage as exc:
        letter = dead_letters.add(exc.reason, data)
        logger.error("malformed message kept as dead letter %s: %s", letter.id, exc.reason)
        return []
    listeners = registry.matching(message)
    for listener in listeners:
        listener.task.apply_async(
            args=(message.as_dict(),), task_id=f"{message.event_id}:{listener.name}"
        )
    logger.info(
        "event %s (%s %s) sent to %d listeners: %s",
        message.event_id,
        message.action,
        message.resource_name,
        len(listeners),
        ", ".join(listener.name for listener in listeners) or "none",
    )
    return [listener.name for listener in listeners]


@app.task(name=DISPATCH_TASK)
def dispatch(message: Any) -> list[str]:
    """Run every listener that wants ``message``."""
    return fan_out(message, registry, dead_letters())


@signals.task_failure.connect
def _keep_failed_listener_message(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    einfo: Any = None,
    **kwargs: Any,
) -> None:
    # Sent once a task failed for good (its retries, if any, are spent).
    name = getattr(sender, "name", None)
    listener = next((entry for entry in registry if entry.task.name == name), None)
    if listener is None:
        return
    message = args[0] if args else None
    letter = dead_letters().add(
        f"{type(exception).__name__}: {exception}",
        message,
        listener=listener.name,
        traceback=str(einfo) if einfo is not None else None,
    )
    logger.error("listener %s failed for good: kept as dead letter %s", listener.name, letter.id)
