"""The fields a log record about an event carries, on both sides: one set of names, for a
formatter that writes them (JSON logs)."""

from __future__ import annotations

from typing import Any

__all__ = ["log_fields"]


def log_fields(
    event_id: Any = None, listener: str | None = None, queue: str | None = None
) -> dict[str, Any]:
    """What a log record about an event carries as fields (``extra=``), for a formatter that
    writes them (JSON logs): ``event_id`` (for one part of an event cut in parts, its message's
    task id, ``<event id>.<part>``), ``listener`` and ``queue``, each None when unknown."""
    return {"event_id": event_id, "listener": listener, "queue": queue}
