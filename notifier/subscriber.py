"""The subscriber: turns each committed ``AfterResourceChanged`` into a published message."""

from __future__ import annotations

import logging
from typing import Any, Protocol
from uuid import uuid4

from notifier.events import impacted_records_of
from notifier.message import Message, encode, split
from notifier.request import gave_up, give_up, shared_environ
from notifier.settings import NotifierSettings
from notifier.spool import Spool

__all__ = ["Publisher", "Subscriber"]

logger = logging.getLogger("notifier")

_POSITIONS = "notifier.positions"


class Publisher(Protocol):
    def publish(self, message: Message, queue: str) -> None: ...


class Subscriber:
    """Called by Pyramid with each ``AfterResourceChanged`` event, notifier's or Kinto's.

    It filters the event with its settings' actions and resources, serialises it, chooses its
    queue from the routing table and publishes it. A message the broker does not take is kept
    in the spool, which publishes it later; while the spool holds messages, new ones queue
    behind them. It never raises: the transaction is already committed, and a broker error
    must not fail the request.
    """

    def __init__(
        self, settings: NotifierSettings, publisher: Publisher, spool: Spool | None = None
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.spool = spool

    def __call__(self, event: Any) -> None:
        resource_name = event.payload.get("resource_name")
        action = event.payload.get("action")
        if not isinstance(resource_name, str) or not isinstance(action, str):
            logger.error("event not published: no resource_name and action in %r", event.payload)
            return
        if not self.settings.wants(resource_name, action):
            return
        impacted_records = impacted_records_of(event)
        event_id = uuid4().hex
        queue = self.settings.routing.queue_for(resource_name, action)
        identity = (
            f"event {event_id} ({action} {resource_name} {event.payload.get('uri')}, "
            f"{len(impacted_records)} records) to queue {queue}"
        )
        environ = shared_environ(event.request)  # the request's id, its records' positions
        try:
            message = encode(
                event.payload,
                impacted_records,
                _positions(event, environ, len(impacted_records)),
                request_id=_request_id(environ),
                event_id=event_id,
            )
        except Exception:
            # The boundary that must not fail: log with the event's identity, never raise.
            logger.exception("could not publish %s: it cannot be serialised", identity)
            return
        # An event too large for one message goes as parts, each published or kept in order.
        for part in split(message, self.settings.max_message_size):
            self._publish(part, queue, event.request, identity)

    def _publish(self, message: Message, queue: str, request: Any, identity: str) -> None:
        if message.parts > 1:
            identity = f"{identity}, part {message.part + 1} of {message.parts}"
        if gave_up(request, self):
            self._keep(message, queue, f"{identity}: the broker failed earlier in this request")
            return
        if self.spool is not None and self._spool_holds_messages():
            self._keep(message, queue, f"{identity}: behind messages the broker did not take")
            return
        try:
            self.publisher.publish(message, queue)
        except Exception:
            logger.exception("could not publish %s", identity)
            give_up(request, self)
            if self.spool is not None:
                self._keep(message, queue, identity)
        else:
            logger.debug("published %s", identity)

    def _spool_holds_messages(self) -> bool:
        assert self.spool is not None
        try:
            return self.spool.holds_messages()
        except Exception:  # a spool that cannot be read: keep the message behind, to be safe
            logger.exception("could not read the spool")
            return True

    def _keep(self, message: Message, queue: str, identity: str) -> None:
        if self.spool is None:
            logger.error("could not publish %s", identity)
            return
        try:
            self.spool.keep(message, queue)
        except Exception:
            logger.exception("could not publish %s, nor keep it in the spool: lost", identity)
        else:
            logger.warning("kept %s in the spool, to publish later", identity)


def _request_id(environ: dict[str, Any] | None) -> str:
    """The id shared by every message of one request, made once per request."""
    if environ is None:
        return uuid4().hex
    if "notifier.request_id" not in environ:
        environ["notifier.request_id"] = uuid4().hex
    return environ["notifier.request_id"]  # type: ignore[no-any-return]


def _positions(event: Any, environ: dict[str, Any] | None, count: int) -> list[int]:
    positions = getattr(event, "positions", None)
    if positions is not None:
        return list(positions)
    # Kinto's events carry no positions: number their records in the order they come, after
    # those of the request's earlier events (Kinto's own merged order, not the chronological
    # one: a Kinto batch [delete x, create x, delete x] comes as delete, delete, create).
    first = 0 if environ is None else environ.get(_POSITIONS, 0)
    if environ is not None:
        environ[_POSITIONS] = first + count
    return list(range(first, first + count))
