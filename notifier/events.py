"""Resource change events, as Cliquet and Kinto define them, and the per-request merging of them.

``ResourceChanged`` is notified inside the transaction, once the request's changes are complete;
``AfterResourceChanged`` is notified after the transaction committed. Both carry Cliquet's
``payload`` and the ``impacted_records`` (Kinto's ``impacted_objects``): a list of
``{"new": ..., "old": ...}`` dicts.

The actions and :func:`~notifier.wire.payload.parent_of`, which the worker side reads too, live
in :mod:`notifier.wire.payload`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from notifier.wire.payload import ACTIONS, Payload, parent_of

__all__ = [
    "AfterResourceChanged",
    "EventBuffer",
    "ResourceChanged",
    "impacted_records_of",
    "make_payload",
]

Record = dict[str, Any]
ImpactedRecord = dict[str, Record]


def impacted_records_of(event: Any) -> list[ImpactedRecord]:
    """The impacted records of a notifier, Kinto or Cliquet event (a Kinto read's objects)."""
    # Kinto's events warn when asked for impacted_records, Cliquet's know no other name.
    for name in ("impacted_objects", "read_objects"):
        records = getattr(event, name, None)
        if records is not None:
            return records  # type: ignore[no-any-return]
    return event.impacted_records  # type: ignore[no-any-return]


class _Event:
    def __init__(
        self,
        payload: Payload,
        impacted_records: list[ImpactedRecord],
        request: Any = None,
        *,
        positions: list[int] | None = None,
    ) -> None:
        self.payload = payload
        self.impacted_records = impacted_records
        self.request = request
        # Where each impacted record stands in the request's chronological order. Merging puts
        # records of one (resource, parent, action) together; the positions keep the real order.
        self.positions = list(range(len(impacted_records))) if positions is None else positions

    @property
    def impacted_objects(self) -> list[ImpactedRecord]:
        """Kinto's name for ``impacted_records``: the same list."""
        return self.impacted_records

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.payload.get('action')} "
            f"{self.payload.get('resource_name')} {self.payload.get('uri')} "
            f"({len(self.impacted_records)} records)>"
        )


class ResourceChanged(_Event):
    """Notified inside the transaction, once per merged (resource, parent, action)."""


class AfterResourceChanged(_Event):
    """Notified after the transaction committed successfully."""


class _Request(Protocol):
    path: str
    matchdict: Mapping[str, Any] | None

    @property
    def authenticated_userid(self) -> Any: ...


def make_payload(
    request: _Request,
    action: ACTIONS,
    resource_name: str,
    record_id: str | None = None,
    timestamp: int | None = None,
) -> Payload:
    """Build Cliquet's payload for a change made by ``request``.

    Every matchdict value is copied; a matchdict ``id`` becomes ``<resource_name>_id`` as in
    Cliquet, and an explicit ``record_id`` wins over both.
    """
    payload: Payload = {
        "timestamp": int(time.time() * 1000) if timestamp is None else timestamp,
        "action": action.value,
        "uri": request.path,
        "user_id": request.authenticated_userid,
        "resource_name": resource_name,
    }
    matchdict = dict(request.matchdict or {})
    if "id" in matchdict:
        matchdict[f"{resource_name}_id"] = matchdict.pop("id")
    payload.update(matchdict)
    if record_id is not None:
        payload[f"{resource_name}_id"] = record_id
    return payload


@dataclass
class _Merged:
    payload: Payload
    impacted_records: list[ImpactedRecord] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


class EventBuffer:
    """The changes of one request, merged per (resource_name, parent, action) like Cliquet does.

    The first change of a kind gives the merged event its payload; later ones add their records.
    Each record remembers its position among all the request's changes, so that a worker can
    replay [delete x, create x, delete x] in that order although it arrives as two events.
    """

    def __init__(self, first_position: int = 0) -> None:
        self._merged: dict[tuple[str, tuple[tuple[str, Any], ...], str], _Merged] = {}
        self._first = self.end = first_position

    def __len__(self) -> int:
        return self.end - self._first

    def add(self, payload: Payload, impacted_record: ImpactedRecord) -> None:
        """Add one changed record, after every record added before it."""
        key = (payload["resource_name"], parent_of(payload), payload["action"])
        merged = self._merged.setdefault(key, _Merged(payload))
        merged.impacted_records.append(impacted_record)
        merged.positions.append(self.end)
        self.end += 1

    def events(self, event_class: type[_Event], request: Any) -> list[_Event]:
        """One event per merged kind, in the order each kind first happened."""
        return [
            event_class(m.payload, m.impacted_records, request, positions=m.positions)
            for m in self._merged.values()
        ]
