"""What a listener receives."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from notifier.events import parent_of
from notifier.message import Message

__all__ = ["Event", "scopes_above"]


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
        """For the delete of a parent (a bucket, a collection...), what to drop: per deleted
        object, the payload values that every record under it carries, e.g.
        ``{"bucket_id": "blog", "collection_id": "posts"}``. Empty for other events."""
        return [scope for scope, _ in self.parent_deletes()]

    def parent_deletes(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """:attr:`deleted_parents`, each with the change (``new``, ``old``) it comes from."""
        if self.action != "delete":
            return []
        parent = dict(parent_of(self.payload))
        own_id = f"{self.resource_name}_id"
        deletes = []
        for change in self.impacted_records:
            # The id as everywhere else: the new record's (a tombstone), else the old one's.
            object_id = (change.get("new") or {}).get("id", (change.get("old") or {}).get("id"))
            if object_id is not None:
                deletes.append(({**parent, own_id: object_id}, change))
        return deletes

    @classmethod
    def from_message(cls, message: Message) -> Event:
        return cls(**{field.name: getattr(message, field.name) for field in fields(message)})


def scopes_above(
    parent: tuple[tuple[str, Any], ...],
) -> Iterator[tuple[tuple[str, Any], ...]]:
    """Every parent whose delete drops a record living in ``parent`` (the sorted payload
    values of :func:`~notifier.events.parent_of`): each non-empty part of it, e.g. for
    ``(("bucket_id", "b"), ("collection_id", "c"))`` the bucket, the collection, and
    ``(("collection_id", "c"),)``, whatever order the app's URLs name them in."""
    for size in range(1, len(parent) + 1):
        yield from itertools.combinations(parent, size)
