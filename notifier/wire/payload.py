"""Cliquet's payload vocabulary, as both sides read it: the actions, and where a record lives.

The web side builds payloads (:mod:`notifier.events`); the worker side filters listeners by
action, groups records by parent and parses lists of actions and resource names from its
settings. Nothing here imports Pyramid or Celery.
"""

from __future__ import annotations

import enum
import re
from typing import Any

__all__ = ["ACTIONS", "Payload", "parent_of", "split_names"]

Payload = dict[str, Any]


class ACTIONS(enum.Enum):
    """What happened to a record (Cliquet's ``cliquet.events.ACTIONS``)."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    READ = "read"

    @classmethod
    def from_string_list(cls, names: list[str]) -> tuple[ACTIONS, ...]:
        """Parse ``["create", "update"]`` into actions; raise ``ValueError`` naming a bad one."""
        return tuple(cls(name) for name in names)


_PAYLOAD_KEYS = frozenset({"timestamp", "action", "uri", "user_id", "resource_name"})


def parent_of(payload: Payload) -> tuple[tuple[str, Any], ...]:
    """The matchdict values that name where a record lives (its bucket, its collection...)."""
    own_id = f"{payload['resource_name']}_id"
    return tuple(
        sorted(
            (key, value)
            for key, value in payload.items()
            if key not in _PAYLOAD_KEYS and key != own_id
        )
    )


def split_names(value: str) -> list[str]:
    """``"create update"``, ``"record, collection"`` or one name a line: the names, in order."""
    return [name for name in re.split(r"[\s,]+", value) if name]
