"""A dispatch task message taken from a queue, read as kombu and Celery would read it.

The take script (``take_dispatches.lua``, tasks/broker/taking.py) checks what Redis's Lua can
check; Python's JSON, kombu's envelope and Celery's task protocol 2 read the rest here. What
one of them could not read, or what the dispatch task could not run with, is a :class:`Taken`
with a ``problem``: dispatch dead-letters it, and acknowledges it before anything else.

Relied on, checked on Celery 5.7.0 and kombu 5.7.0: kombu's envelope (``headers``,
``properties`` with ``body_encoding``, ``delivery_tag`` and ``delivery_info``, the ``body``
encoded as ``content-encoding`` says) and the body of Celery's task protocol 2,
``[args, kwargs, embed]``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kombu.utils.encoding import bytes_to_str

__all__ = ["Taken"]


# What Celery's task protocol 2 puts in a body besides args and kwargs: work after the task.
_EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")


def _dispatch_arguments(message: Any, only: Any = None) -> tuple[Any, Any]:
    # The dispatch task's signature (tasks/dispatch/task.py; a test compares them): the arguments
    # are bound as Celery binds them when it runs the task.
    return message, only


class _Unreadable(Exception):
    """Raised when a taken item is not a dispatch task message this worker can run."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A dispatch task message taken from a queue: what the dispatch task would run with."""

    tag: str  # kombu's delivery tag: its key in the unacked hash and index
    task_id: str
    message: Any  # the dispatch task's first argument
    only: list[str] | None = None  # the listeners a retry is for
    retries: int = 0
    redelivered: bool = False
    raw: str | bytes = field(default="", repr=False)  # the queue item as it was
    problem: str | None = None  # why the dispatch task could not run with it
    size: int | None = None  # bytes of its body's JSON
    envelope: Any = field(default=None, repr=False)  # kombu's envelope, when it could read it

    @classmethod
    def parse(cls, raw: str | bytes, tag: str) -> Taken:
        """Read a queue item the take script accepted, as kombu reads it; one that kombu
        cannot read, or whose body the dispatch task could not run with, has the reason as its
        ``problem``. Never raises."""
        try:
            # The JSON kombu's sweep reads (kombu's loads only turns its "__type__" objects, in
            # headers dispatch does not read, into Python values; at twice the cost).
            envelope = json.loads(bytes_to_str(raw))
            task_id = str(envelope["headers"].get("id") or tag)
        except (ValueError, TypeError, LookupError, AttributeError) as exc:
            # Redis's Lua read it; Python's JSON (and kombu's sweep) cannot.
            problem = f"an item that is not JSON kombu can read: {type(exc).__name__}: {exc}"
            return cls(tag, tag, None, raw=raw, problem=problem)
        try:
            return cls._parse(envelope, raw, tag, task_id)
        except _Unreadable as exc:
            return cls(tag, task_id, None, raw=raw, problem=str(exc), envelope=envelope)

    @classmethod
    def _parse(cls, envelope: dict[str, Any], raw: str | bytes, tag: str, task_id: str) -> Taken:
        headers, properties = envelope["headers"], envelope["properties"]
        try:
            body = envelope["body"]
            if properties.get("body_encoding") == "base64":
                body = base64.b64decode(body, validate=True)
            if isinstance(body, bytes):
                body = body.decode(envelope.get("content-encoding") or "utf-8")
            decoded = json.loads(body)
        except (ValueError, TypeError, LookupError) as exc:
            raise _Unreadable(
                f"a body that cannot be decoded: {type(exc).__name__}: {exc}"
            ) from None
        if not (isinstance(decoded, list) and len(decoded) in (2, 3)):
            raise _Unreadable("a body that is not [args, kwargs, embed]")
        args, kwargs = decoded[0], decoded[1]
        embed = decoded[2] if len(decoded) == 3 else {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _Unreadable("a body whose args are not a list or kwargs not an object")
        try:
            message, only = _dispatch_arguments(*args, **kwargs)
        except TypeError:
            raise _Unreadable(
                f"dispatch takes a message and only=, not args {args!r} and kwargs {kwargs!r}"
            ) from None
        if only is not None and not (
            isinstance(only, list) and all(isinstance(name, str) for name in only)
        ):
            raise _Unreadable(f"only={only!r} is not a list of listener names")
        if isinstance(embed, Mapping) and any(embed.get(key) for key in _EMBED_KEYS):
            raise _Unreadable("a task message with callbacks, a chain or a chord")
        retries = headers.get("retries") or 0
        info = properties.get("delivery_info") or {}
        return cls(
            tag=tag,
            task_id=task_id,
            message=message,
            only=only,
            retries=retries if isinstance(retries, int) else 0,
            redelivered=bool(headers.get("redelivered") or info.get("redelivered")),
            raw=raw,
            envelope=envelope,
            size=len(body),  # about its message's JSON: a batch counts it
        )
