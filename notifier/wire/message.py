"""The wire contract: one JSON message per event, sent as a Celery task by name.

The web side builds messages with :func:`encode`; the worker side reads them with
:func:`decode`. Nothing here imports Pyramid or the worker side, so both can share it.

A message, schema version 1::

    {
      "version": 1,
      "event_id": "9f1c...",          # unique per message: duplicates are recognisable
      "request_id": "4be0...",        # shared by every event of one request (one transaction)
      "resource_name": "article",
      "action": "create",
      "payload": {...},               # Cliquet's payload, unchanged
      "impacted_records": [{"new": {...}, "old": {...}}, ...],
      "positions": [0, 3],            # each record's place in the request's chronological order
      "part": 0, "parts": 1,          # an event too large for one message comes in parts
      "committed_at": 1764630000.25   # optional: when the web side built it, unix seconds
    }

``committed_at`` is written by the web side as it builds the message, just after the commit
(with an outbox, or Kinto's before-commit listeners, just before it); the worker measures the
lag to each listener from it. Messages written before it existed have none (``None``).

An event whose records would make a message larger than a bound is split (:func:`split`) into
parts that share its ``event_id`` and payload, each with some of its records, in order.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from notifier.errors import MalformedMessage
from notifier.wire.payload import ACTIONS

__all__ = ["DISPATCH_TASK", "SCHEMA_VERSION", "Message", "decode", "encode", "split"]

#: The name of the worker task that receives every message.
DISPATCH_TASK = "notifier.dispatch"
#: The version of the message layout this code writes and reads.
SCHEMA_VERSION = 1

_ACTION_NAMES = frozenset(action.value for action in ACTIONS)


@dataclass(frozen=True, slots=True)
class Message:
    """One event on the wire."""

    event_id: str
    request_id: str
    resource_name: str
    action: str
    payload: dict[str, Any]
    impacted_records: list[dict[str, Any]]
    positions: list[int]
    part: int = 0
    parts: int = 1
    version: int = SCHEMA_VERSION
    #: When the web side built the message (unix seconds), if it said.
    committed_at: float | None = None

    @property
    def task_id(self) -> str:
        """The id of this message's task: the event's, and the part's when there are several."""
        return self.event_id if self.parts == 1 else f"{self.event_id}.{self.part}"

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready form sent as the dispatch task's only argument."""
        data = {
            "version": self.version,
            "event_id": self.event_id,
            "request_id": self.request_id,
            "resource_name": self.resource_name,
            "action": self.action,
            "payload": self.payload,
            "impacted_records": self.impacted_records,
            "positions": self.positions,
            "part": self.part,
            "parts": self.parts,
        }
        if self.committed_at is not None:
            data["committed_at"] = self.committed_at
        return data


def encode(
    payload: Mapping[str, Any],
    impacted_records: Sequence[Mapping[str, Any]],
    positions: Sequence[int],
    request_id: str,
    event_id: str | None = None,
    committed_at: float | None = None,
) -> Message:
    """Build the message of one event; ``event_id`` defaults to a new unique id."""
    return Message(
        event_id=event_id or uuid.uuid4().hex,
        request_id=request_id,
        resource_name=payload["resource_name"],
        action=payload["action"],
        payload=dict(payload),
        impacted_records=[dict(record) for record in impacted_records],
        positions=list(positions),
        committed_at=committed_at,
    )


def decode(data: object) -> Message:
    """Check that ``data`` is a message this code understands, and return it.

    Raise :class:`MalformedMessage` with the reason otherwise. Kinto's name
    ``impacted_objects`` is accepted for ``impacted_records``.
    """
    if not isinstance(data, Mapping):
        raise MalformedMessage(f"a message is a JSON object, not {type(data).__name__}")
    version = data.get("version")
    if version != SCHEMA_VERSION:
        raise MalformedMessage(
            f"unknown schema version {version!r}: this worker reads version {SCHEMA_VERSION}"
        )
    records_key = "impacted_records" if "impacted_records" in data else "impacted_objects"
    missing = [
        key
        for key in (
            "event_id",
            "request_id",
            "resource_name",
            "action",
            "payload",
            records_key,
            "positions",
        )
        if key not in data
    ]
    if missing:
        raise MalformedMessage(f"missing keys: {', '.join(missing)}")
    payload = data["payload"]
    records = data[records_key]
    positions = data["positions"]
    if not isinstance(payload, Mapping):
        raise MalformedMessage("payload is not a JSON object")
    for key in ("resource_name", "action"):
        if not isinstance(data[key], str):
            raise MalformedMessage(f"{key} is not a string")
        if payload.get(key) != data[key]:
            raise MalformedMessage(f"{key} {data[key]!r} differs from the payload's")
    if data["action"] not in _ACTION_NAMES:
        raise MalformedMessage(f"unknown action {data['action']!r}")
    if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
        raise MalformedMessage(f"{records_key} is not a list of JSON objects")
    if not isinstance(positions, list) or len(positions) != len(records):
        raise MalformedMessage(f"positions is not a list as long as {records_key}")
    if not all(isinstance(p, int) for p in positions):
        raise MalformedMessage("positions holds something other than integers")
    # Messages written before parts existed are whole events.
    part, parts = data.get("part", 0), data.get("parts", 1)
    if not (isinstance(part, int) and isinstance(parts, int) and 0 <= part < parts):
        raise MalformedMessage(f"part {part!r} of {parts!r} is not a part of an event")
    for key in ("event_id", "request_id"):
        if not isinstance(data[key], str) or not data[key]:
            raise MalformedMessage(f"{key} is not a non-empty string")
    # Only a measure: a message whose committed_at is no number is still delivered, without it.
    committed_at = data.get("committed_at")
    if isinstance(committed_at, bool) or not isinstance(committed_at, int | float):
        committed_at = None
    return Message(
        event_id=data["event_id"],
        request_id=data["request_id"],
        resource_name=data["resource_name"],
        action=data["action"],
        payload=dict(payload),
        impacted_records=[dict(record) for record in records],
        positions=positions,
        part=part,
        parts=parts,
        committed_at=float(committed_at) if committed_at is not None else None,
    )


def split(message: Message, max_bytes: int) -> list[Message]:
    """``message`` as parts whose records (and their positions) take at most about
    ``max_bytes`` of JSON each (a record larger than that travels alone), in order; one part
    when it fits."""
    if len(message.impacted_records) < 2:  # nothing to split: a record travels whole
        return [message]
    groups: list[tuple[list[dict[str, Any]], list[int]]] = [([], [])]
    size = 0
    for record, position in zip(message.impacted_records, message.positions, strict=True):
        # The record, its position, and the separators between them in the JSON.
        record_size = len(json.dumps(record, default=str)) + len(str(position)) + 4
        records, positions = groups[-1]
        if records and size + record_size > max_bytes:
            groups.append(([], []))
            records, positions, size = *groups[-1], 0
        records.append(record)
        positions.append(position)
        size += record_size
    if len(groups) == 1:
        return [message]
    return [
        replace(message, impacted_records=records, positions=positions, part=n, parts=len(groups))
        for n, (records, positions) in enumerate(groups)
    ]
