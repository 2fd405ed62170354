"""What a listener receives."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from notifier.message import Message

__all__ = ["Event"]


class Event(Message):
    """One resource change event, rebuilt from its message in the worker.

    ``payload`` is Cliquet's payload; ``impacted_records`` (Kinto: ``impacted_objects``) the
    list of ``{"new": ..., "old": ...}`` changes, in the order they happened; ``positions``
    each change's place among all the changes of its request (``request_id``).
    """

    __slots__ = ()

    @property
    def impacted_objects(self) -> list[dict[str, Any]]:
        """Kinto's name for ``impacted_records``: the same list."""
        return self.impacted_records

    @classmethod
    def from_message(cls, message: Message) -> Event:
        return cls(**{field.name: getattr(message, field.name) for field in fields(message)})
