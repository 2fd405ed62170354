"""A registered listener: which events it wants (the one matching rule), and the Celery task
that runs it. :mod:`tasks.listeners.registry` makes them, with ``@listener``."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Task

from notifier.wire.message import Message

__all__ = ["Listener", "wants"]


@dataclass(frozen=True, slots=True)
class Listener:
    """A registered listener: which events it wants, and the Celery task that runs it."""

    name: str
    resource_names: frozenset[str]  # {"*"}: every resource
    actions: frozenset[str]
    task: Task[Any, Any]
    queue: str
    where: Mapping[str, frozenset[str]] = field(default_factory=dict)  # payload key: values
    ordered: bool = False
    parents: frozenset[str] = frozenset()  # resources whose deletes drop what is under them
    batch: int | None = None  # a batch listener: the most events one run receives

    def wants(self, message: Message) -> bool:
        return wants(message, self.resource_names, self.actions, self.where, self.parents)

    def is_parent_delete(self, message: Message) -> bool:
        """Whether ``message`` deletes a parent of this listener's resources."""
        return message.action == "delete" and message.resource_name in self.parents


def wants(
    message: Message,
    resource_names: Collection[str],
    actions: Collection[str],
    where: Mapping[str, Collection[str]],
    parents: Collection[str],
) -> bool:
    """Whether a listener of these ``resource_names``, ``actions``, ``where`` and ``parents``
    (as ``@listener`` checked them) wants ``message``: the one matching rule, for the listeners
    of this worker and for those other workers announce (tasks/fleet.py)."""
    if message.action == "delete" and message.resource_name in parents:
        # A bucket's delete has no collection_id, yet drops the collections a
        # where={"collection_id": ...} listener keeps: only the values it has must match.
        return all(
            message.payload.get(key) is None or message.payload.get(key) in values
            for key, values in where.items()
        )
    return (
        message.action in actions
        and ("*" in resource_names or message.resource_name in resource_names)
        and all(
            isinstance(value := message.payload.get(key), str) and value in values
            for key, values in where.items()
        )
    )
