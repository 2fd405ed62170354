"""``request.notify_resource_changed``: how a view declares a change, and when events fire.

The changes of a request are merged into events (see :class:`notifier.events.EventBuffer`).
With pyramid_tm, ``ResourceChanged`` fires just before the commit and ``AfterResourceChanged``
just after a successful one. Without a transaction manager, both fire once the request produced
a successful response. A failed or rolled-back request fires nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pyramid import threadlocal

from notifier.events import AfterResourceChanged, EventBuffer, ResourceChanged, make_payload
from notifier.wire.payload import ACTIONS

if TYPE_CHECKING:
    from pyramid.request import Request
    from pyramid.response import Response

__all__ = [
    "current_transaction",
    "give_up",
    "gave_up",
    "notify_resource_changed",
    "outermost",
    "shared_environ",
]

logger = logging.getLogger("notifier")

_BUFFER = "notifier.events"
_GAVE_UP = "notifier.gave_up"
_COMMITTING = "notifier.committing"


def notify_resource_changed(
    request: Request,
    action: ACTIONS | str,
    resource_name: str,
    record_id: str | None = None,
    *,
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    timestamp: int | None = None,
) -> None:
    """Declare that this request changed a record of ``resource_name``.

    ``new`` is the record after the change (create, update; Kinto sends a tombstone for delete),
    ``old`` the record before it (update, delete). ``timestamp`` defaults to the new record's
    ``last_modified``, else to now, in milliseconds.
    """
    try:
        action = ACTIONS(action)
    except ValueError:
        allowed = ", ".join(a.value for a in ACTIONS)
        raise ValueError(f"unknown action {action!r}: use one of {allowed}") from None
    impacted: dict[str, dict[str, Any]] = {}
    if new is not None:
        impacted["new"] = new
    if old is not None:
        impacted["old"] = old
    if not impacted:
        raise ValueError(f"a {action.value} of {resource_name} needs new=, old= or both")
    if timestamp is None and new is not None and isinstance(new.get("last_modified"), int):
        timestamp = new["last_modified"]
    payload = make_payload(request, action, resource_name, record_id, timestamp)
    _buffer(outermost(request)).add(payload, impacted)


def outermost(request: Request) -> Request:
    """The request whose transaction ``request``'s changes belong to: itself, or the parent of
    a subrequest."""
    # A subrequest belongs to its parent's transaction: its changes are published when the
    # parent's commit succeeds, never from the subrequest's own response. Batch views (Kinto's,
    # Cornice's) set ``parent``; otherwise the parent is the first request on Pyramid's stack of
    # request contexts, which invoke_subrequest pushes onto.
    while getattr(request, "parent", None) is not None:
        request = request.parent
    if request.environ.get("tm.active"):
        return request
    for context in threadlocal.manager.stack:
        first = context.get("request")
        if first is not None and first is not request and first.environ.get("tm.active"):
            return first
    return request


def _buffer(request: Request) -> EventBuffer:
    # One buffer per transaction: a view that commits and begins another transaction publishes
    # each one's changes when that one commits. Positions go on counting across them.
    transaction = request.tm.get() if request.environ.get("tm.active") else None
    current: tuple[Any, EventBuffer] | None = request.environ.get(_BUFFER)
    if current is not None and current[0] is transaction:
        return current[1]
    buffer = EventBuffer(first_position=current[1].end if current else 0)
    request.environ[_BUFFER] = (transaction, buffer)
    if transaction is not None:
        transaction.addBeforeCommitHook(_before_commit, (request, buffer, transaction))
        transaction.addAfterCommitHook(_after_commit, (request, buffer))
    else:
        request.add_response_callback(
            lambda request, response: _after_response(request, response, buffer)
        )
    return buffer


def _before_commit(request: Request, buffer: EventBuffer, transaction: Any = None) -> None:
    # pyramid_tm no longer says which transaction is active while it commits: the subscribers
    # of ResourceChanged learn it from current_transaction().
    request.environ[_COMMITTING] = transaction
    try:
        for event in buffer.events(ResourceChanged, request):
            request.registry.notify(event)
    finally:
        del request.environ[_COMMITTING]


def current_transaction(request: Any) -> Any:
    """The transaction that ``request``'s changes belong to now (the one that notified its
    ``ResourceChanged`` while it commits), or ``None`` without a transaction manager."""
    if getattr(request, "environ", None) is None:
        return None
    top = outermost(request)
    committing = top.environ.get(_COMMITTING)
    if committing is not None:
        return committing
    if top.environ.get("tm.active"):
        return top.tm.get()
    return None


def _after_commit(succeeded: bool, request: Request, buffer: EventBuffer) -> None:
    if not succeeded:
        logger.info("transaction rolled back: %d changed records not published", len(buffer))
        return
    for event in buffer.events(AfterResourceChanged, request):
        request.registry.notify(event)


def _after_response(request: Request, response: Response, buffer: EventBuffer) -> None:
    if request.exception is not None or response.status_int >= 400:
        logger.info("request failed: %d changed records not published", len(buffer))
        return
    # No transaction: the response is the commit. What waits for "the" commit runs once every
    # subscriber of ResourceChanged has run, as it would with a transaction.
    response_done = _ResponseDone()
    _before_commit(request, buffer, response_done)
    response_done.run()
    _after_commit(True, request, buffer)


class _ResponseDone:
    """Stands for the transaction of a request without one: collects after-commit hooks."""

    def __init__(self) -> None:
        self._hooks: list[tuple[Any, tuple[Any, ...]]] = []

    def addAfterCommitHook(self, hook: Any, args: tuple[Any, ...] = ()) -> None:
        self._hooks.append((hook, args))

    def run(self) -> None:
        for hook, args in self._hooks:
            hook(True, *args)


def gave_up(request: Any, publisher: object) -> bool:
    """Whether ``publisher`` failed once already during ``request``'s transaction.

    A publisher whose broker failed tries no more for the rest of the request: one wait for a
    broker that is down or hung is enough. Each publisher keeps its own account, so that one
    broker's failure costs nothing to another.
    """
    environ = shared_environ(request)
    return environ is not None and id(publisher) in environ.get(_GAVE_UP, ())


def give_up(request: Any, publisher: object) -> None:
    """Record that ``publisher`` failed during ``request`` (see :func:`gave_up`)."""
    environ = shared_environ(request)
    if environ is not None:
        environ.setdefault(_GAVE_UP, set()).add(id(publisher))


def shared_environ(request: Any) -> dict[str, Any] | None:
    """The environ of the outermost request, where what one request shares is kept (a Kinto
    batch's subrequests are one request); ``None`` for an event without a request."""
    if getattr(request, "environ", None) is None:
        return None
    environ: dict[str, Any] = outermost(request).environ
    return environ
