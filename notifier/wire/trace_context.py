"""The trace context a task message carries, when OpenTelemetry is installed.

The web side adds the current context (OpenTelemetry's propagators: W3C ``traceparent`` and
``tracestate``, and ``baggage``) to the headers of each message it writes, and the worker's
taker to the listener tasks it writes: the headers OpenTelemetry's Celery instrumentation reads
when the task runs, so that its span joins the trace of the web request that changed the
record. A dispatch run attaches the context of each message it took while it handles it
(:func:`attached`), so that what runs for that message (a listener in dispatch, a listener task
sent) is in that message's trace, not in the dispatch task's. Without OpenTelemetry, or without
a span, nothing is added and nothing attached.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
except ImportError:  # pragma: no cover - OpenTelemetry is optional
    _context = None  # type: ignore[assignment]
    _propagate = None  # type: ignore[assignment]

__all__ = ["attached", "current"]


def current() -> dict[str, str]:
    """The current trace context as message headers: none without a span."""
    carrier: dict[str, str] = {}
    if _propagate is not None:
        _propagate.inject(carrier)
    return carrier


@contextmanager
def attached(headers: Mapping[str, Any] | None) -> Iterator[None]:
    """Make the trace context in ``headers`` (a message's) the current one, meanwhile."""
    if _propagate is None or not headers or "traceparent" not in headers:
        yield
        return
    token = _context.attach(_propagate.extract(headers))
    try:
        yield
    finally:
        _context.detach(token)
