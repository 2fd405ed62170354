"""The subscriber: turns each committed ``AfterResourceChanged`` into a published message."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from uuid import uuid4

from notifier.events import impacted_records_of
from notifier.metrics import WebMetrics, web_metrics
from notifier.request import gave_up, give_up, shared_environ
from notifier.settings import NotifierSettings
from notifier.spool import Spool
from notifier.spool.log import broker_trouble, cause
from notifier.wire.logs import log_fields
from notifier.wire.message import Message, encode, split

if TYPE_CHECKING:
    from notifier.outbox import Outbox

__all__ = ["Outgoing", "Publisher", "Subscriber"]

logger = logging.getLogger("notifier")

_POSITIONS = "notifier.positions"


class Publisher(Protocol):
    def publish(self, message: Message, queue: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message on its way to its queue, and what the logs call it."""

    message: Message
    queue: str
    identity: str


class Subscriber:
    """Publishes each committed ``AfterResourceChanged`` event, notifier's or Kinto's.

    It filters the event with its settings' actions and resources, serialises it, chooses its
    queue from the routing table (:meth:`prepare`) and publishes it (:meth:`publish`). A
    message the broker does not take is spooled, and the spool publishes it later; while the
    spool holds messages, new ones queue behind them. It never raises: the transaction is
    already committed, and a broker error must not fail the request.

    With an outbox, :meth:`prepare` runs inside the transaction, whose commit then carries the
    messages (:meth:`write_to_outbox`); after it, :meth:`publish` hands them to the outbox's
    thread, which publishes them: the request never waits for the broker.

    What it spools or loses is counted in ``metrics`` (default: the process's); from the
    first request it publishes for, the metrics service of that request's registry (Kinto's)
    is told the counts too.
    """

    def __init__(
        self,
        settings: NotifierSettings,
        publisher: Publisher,
        spool: Spool | None = None,
        outbox: Outbox | None = None,
        metrics: WebMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.spool = spool
        self.outbox = outbox
        self.metrics = metrics if metrics is not None else web_metrics()
        self._reporting = False  # to the metrics service of the requests' registry

    def __call__(self, event: Any) -> None:
        self.publish(self.prepare(event), event.request)

    def prepare(self, event: Any) -> list[Outgoing]:
        """The messages of ``event`` (several when it is too large for one), each with its
        queue; none when the settings leave the event out or it cannot be serialised."""
        resource_name = event.payload.get("resource_name")
        action = event.payload.get("action")
        if not isinstance(resource_name, str) or not isinstance(action, str):
            logger.error("event not published: no resource_name and action in %r", event.payload)
            return []
        if not self.settings.wants(resource_name, action):
            return []
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
                # The commit's time, for the worker's lag: this runs just after it (or, with an
                # outbox and in Kinto's before-commit forwarder, just before it).
                committed_at=time.time(),
            )
        except Exception:
            # The boundary that must not fail: log with the event's identity, never raise.
            logger.exception("could not publish %s: it cannot be serialised", identity)
            return []
        # An event too large for one message goes as parts, each published or spooled in order.
        parts = split(message, self.settings.max_message_size)
        if len(parts) == 1:
            return [Outgoing(message, queue, identity)]
        return [
            Outgoing(part, queue, f"{identity}, part {part.part + 1} of {part.parts}")
            for part in parts
        ]

    def write_to_outbox(self, outgoing: list[Outgoing], request: Any) -> None:
        """Write ``outgoing`` into the outbox, in the transaction of ``request``: they commit or
        roll back with its changes. Raise :class:`~notifier.errors.OutboxError` when they
        cannot be written: the changes must not commit without them."""
        if self.outbox is not None and outgoing:
            self.outbox.write(request, [(item.message, item.queue) for item in outgoing])

    def publish(self, outgoing: list[Outgoing], request: Any) -> None:
        """Publish ``outgoing``, in order; what the broker does not take waits in the spool
        (with an outbox: in the table)."""
        if not self._reporting and request is not None:
            self._reporting = True
            self.metrics.report_to(getattr(request, "registry", None))
        if self.outbox is not None:
            self.outbox.submit([(item.message, item.queue) for item in outgoing])
            return
        for item in outgoing:
            self._publish(item.message, item.queue, request, item.identity)

    def _publish(self, message: Message, queue: str, request: Any, identity: str) -> None:
        if gave_up(request, self):
            self._spool(message, queue, f"{identity}: the broker failed earlier in this request")
            return
        if self.spool is not None and self._spool_holds_messages():
            self._spool(message, queue, f"{identity}: behind messages the broker did not take")
            return
        try:
            self.publisher.publish(message, queue)
        except Exception as exc:
            give_up(request, self)
            self._spool(message, queue, identity, exc)
        else:
            logger.debug("published %s", identity, extra=log_fields(message.event_id, queue=queue))

    def _spool_holds_messages(self) -> bool:
        assert self.spool is not None
        try:
            return self.spool.holds_messages()
        except Exception:  # a spool that cannot be read: spool the message behind, to be safe
            logger.exception("could not read the spool")
            return True

    def _spool(
        self, message: Message, queue: str, identity: str, failure: Exception | None = None
    ) -> None:
        # One line for each message not published: what it is, why, and where it went. The
        # broker's own trouble (down, hung, refusing) is what the spool is for: no traceback.
        fields = log_fields(message.event_id, queue=queue)
        why = f" ({cause(failure)})" if failure is not None else ""
        unexpected = failure if failure is not None and not broker_trouble(failure) else None
        if self.spool is None:
            self.metrics.lost(queue)
            logger.error(
                "could not publish %s%s: lost, no spool",
                identity,
                why,
                exc_info=unexpected,
                extra=fields,
            )
            return
        try:
            self.spool.write(message, queue)
        except Exception:
            self.metrics.lost(queue)
            logger.exception(
                "could not publish %s%s, nor keep it in the spool: lost",
                identity,
                why,
                extra=fields,
            )
        else:
            self.metrics.spooled(queue)
            logger.warning(
                "could not publish %s%s: kept in the spool, to publish later",
                identity,
                why,
                exc_info=unexpected,
                extra=fields,
            )


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
