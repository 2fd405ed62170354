"""What a listener receives."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from notifier.wire.message import Message
from notifier.wire.payload import parent_of

__all__ = ["Event", "ParentDelete", "canonical", "change_id", "change_version", "scopes_above"]


@dataclass(frozen=True, slots=True)
class ParentDelete:
    """The delete of a parent: what is under it (payload values) and when it happened."""

    scope: dict[str, Any]
    last_modified: int | None


def change_id(change: dict[str, Any]) -> Any:
    """The id of a changed object: the new record's (a tombstone's), else the old one's."""
    return (change.get("new") or {}).get("id", (change.get("old") or {}).get("id"))


def change_version(change: dict[str, Any], payload: dict[str, Any]) -> int | None:
    """When a change happened: its new record's ``last_modified`` (a tombstone's), else the
    payload's ``timestamp``; None when neither is an integer."""
    version = (change.get("new") or {}).get("last_modified", payload.get("timestamp"))
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def canonical(items: Any) -> str:
    """A parent or a scope (pairs of payload key and value) as one string: a JSON object with
    sorted keys, the same whatever order the pairs came in."""
    return json.dumps(dict(items), sort_keys=True)


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

    @property
    def deleted_parents(self) -> list[dict[str, Any]]:
        """For a delete: per deleted object, the payload values that every record under it
        carries, e.g. ``{"bucket_id": "blog", "collection_id": "posts"}`` for a collection's
        delete. A listener with ``parents=`` reads it on its parents' deletes; see
        :meth:`parent_deletes` for when each delete happened."""
        return [delete.scope for delete in self.parent_deletes()]

    def parent_deletes(self) -> list[ParentDelete]:
        """:attr:`deleted_parents`, each with the version of its delete: drop what is under
        ``scope`` and not newer than ``last_modified`` (a record re-created under a re-created
        parent may have been applied already)."""
        if self.action != "delete":
            return []
        parent = dict(parent_of(self.payload))
        own_id = f"{self.resource_name}_id"
        return [
            ParentDelete({**parent, own_id: object_id}, change_version(change, self.payload))
            for change in self.impacted_records
            if (object_id := change_id(change)) is not None
        ]

    @classmethod
    def from_message(cls, message: Message) -> Event:
        return cls(**{name: getattr(message, name) for name in _MESSAGE_FIELDS})


_MESSAGE_FIELDS = tuple(field.name for field in fields(Message))


def scopes_above(
    parent: tuple[tuple[str, Any], ...],
) -> Iterator[tuple[tuple[str, Any], ...]]:
    """Every parent whose delete drops a record living in ``parent`` (the sorted payload
    values of :func:`~notifier.wire.payload.parent_of`): each non-empty part of it, e.g. for
    ``(("bucket_id", "b"), ("collection_id", "c"))`` the bucket, the collection, and
    ``(("collection_id", "c"),)``, whatever order the app's URLs name them in."""
    for size in range(1, len(parent) + 1):
        yield from itertools.combinations(parent, size)
