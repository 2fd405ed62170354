"""The subscriber: turns each committed ``AfterResourceChanged`` into a published message."""

from __future__ import annotations

import logging
from typing import Protocol
from uuid import uuid4

from notifier.events import AfterResourceChanged
from notifier.message import Message, encode
from notifier.settings import NotifierSettings

__all__ = ["Publisher", "Subscriber"]

logger = logging.getLogger("notifier")

_BROKER_FAILED = "notifier.broker_failed"


class Publisher(Protocol):
    def publish(self, message: Message, queue: str) -> None: ...


class Subscriber:
    """Called by Pyramid with each ``AfterResourceChanged`` event.

    It filters the event with ``notifier.actions`` and ``notifier.resources``, serialises it,
    chooses its queue from the routing table and publishes it. It never raises: the transaction
    is already committed, and a broker error must not fail the request.
    """

    def __init__(self, settings: NotifierSettings, publisher: Publisher) -> None:
        self.settings = settings
        self.publisher = publisher

    def __call__(self, event: AfterResourceChanged) -> None:
        resource_name = event.payload.get("resource_name")
        action = event.payload.get("action")
        if not isinstance(resource_name, str) or not isinstance(action, str):
            logger.error("event not published: no resource_name and action in %r", event.payload)
            return
        if not self.settings.wants(resource_name, action):
            return
        event_id = uuid4().hex
        queue = self.settings.routing.queue_for(resource_name, action)
        identity = (
            f"event {event_id} ({action} {resource_name} {event.payload.get('uri')}, "
            f"{len(event.impacted_records)} records) to queue {queue}"
        )
        environ = getattr(event.request, "environ", None)
        if environ is not None and environ.get(_BROKER_FAILED):
            # One wait for a broker that failed is enough for a request.
            logger.error(
                "could not publish %s: the broker failed earlier in this request", identity
            )
            return
        try:
            message = encode(
                event.payload,
                event.impacted_records,
                event.positions,
                request_id=request_id(event.request),
                event_id=event_id,
            )
            self.publisher.publish(message, queue)
        except Exception:
            # The boundary that must not fail: log with the event's identity, never raise.
            logger.exception("could not publish %s", identity)
            if environ is not None:
                environ[_BROKER_FAILED] = True
        else:
            logger.debug("published %s", identity)


def request_id(request: object) -> str:
    """The id shared by every message of one request, made once per request."""
    environ = getattr(request, "environ", None)
    if environ is None:
        return uuid4().hex
    return environ.setdefault("notifier.request_id", uuid4().hex)  # type: ignore[no-any-return]
