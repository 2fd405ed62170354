"""Dispatch's collector of batches: the events each batch listener wants, over dispatch's own
message and those it takes after it, sent as one task per batch listener.

What a batch listener is, and how its task runs a batch, is :mod:`tasks.listeners.batch`. A batch
holds at most the listener's ``batch`` messages and about :data:`BATCH_BYTES` of JSON (one message
larger than that travels alone); its task id is ``<first message's task id>+<count>:<listener>``,
and a batch of one travels as a single message, with the id any listener's task has,
``<task id>:<listener>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.dispatch.delivery import Delivery, listener_task_id

if TYPE_CHECKING:
    from tasks.listeners.registry import Listener

__all__ = ["BATCH_BYTES", "Batches", "batch_task_id"]

logger = logging.getLogger("notifier")

#: How many bytes of messages (their JSON) one batch holds at most, whatever its ``batch``, so
#: that a batch task message stays small (the parts of one large event fill it fast); a
#: message larger than this travels alone.
BATCH_BYTES = 1 << 20


def batch_task_id(task_ids: list[str], listener_name: str) -> str:
    """The id of a batch listener's task for messages of these task ids."""
    if len(task_ids) == 1:
        return listener_task_id(task_ids[0], listener_name)
    return listener_task_id(f"{task_ids[0]}+{len(task_ids)}", listener_name)


@dataclass
class _Batch:
    listener: Listener
    entries: list[tuple[Delivery, Any, str]] = field(default_factory=list)
    size: int = 0  # bytes of messages


class Batches:
    """The events dispatch collects for its batch listeners; each batch is sent as one task once
    it holds ``batch`` messages or ``max_bytes`` of them (before a message that would take it
    past that), or by :meth:`send_all`.

    ``send(listener, messages, task_id)`` sends one: raising any of ``errors`` marks its
    messages' deliveries as not sent to that listener.
    """

    def __init__(
        self,
        send: Callable[[Listener, Any, str], None],
        errors: tuple[type[BaseException], ...],
        max_bytes: int = BATCH_BYTES,
    ) -> None:
        self._send = send
        self._errors = errors
        self._max_bytes = max_bytes
        self._batches: dict[str, _Batch] = {}

    def add(self, listener: Listener, delivery: Delivery, message: Any, task_id: str) -> None:
        """Hold ``message`` (of task id ``task_id``) for the batch ``listener`` wants."""
        if delivery.size is None:
            delivery.size = len(json.dumps(message, separators=(",", ":")))
        batch = self._batches.get(listener.name)
        if batch is not None and batch.size + delivery.size > self._max_bytes:
            self.send(listener.name)
        batch = self._batches.setdefault(listener.name, _Batch(listener))
        batch.entries.append((delivery, message, task_id))
        batch.size += delivery.size
        delivery.pending += 1
        if len(batch.entries) >= (listener.batch or 1) or batch.size >= self._max_bytes:
            self.send(listener.name)

    def send(self, name: str) -> None:
        """Send the batch of listener ``name`` now."""
        batch = self._batches.pop(name, None)
        if batch is None or not batch.entries:
            return
        listener = batch.listener
        messages = [message for _, message, _ in batch.entries]
        task_id = batch_task_id([task_id for _, _, task_id in batch.entries], listener.name)
        try:
            self._send(listener, messages if len(messages) > 1 else messages[0], task_id)
        except self._errors:
            logger.exception("batch %s not sent to listener %s", task_id, listener.name)
            for delivery, _, _ in batch.entries:
                if listener.name not in delivery.not_sent:
                    delivery.not_sent.append(listener.name)
        else:
            logger.info("%d events sent to batch listener %s", len(messages), listener.name)
        finally:
            for delivery, _, _ in batch.entries:
                delivery.pending -= 1

    def send_all(self) -> None:
        """Send every batch, full or not."""
        for name in list(self._batches):
            self.send(name)
