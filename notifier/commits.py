"""When the changes of a transaction are published: after *that* transaction commits.

A change is notified (``ResourceChanged``) inside the transaction that makes it. Whatever the
host does with its own after-commit events, notifier publishes the change from a hook on that
very transaction (:func:`after_commit`): a request that commits twice publishes each part after
its own commit, a rolled-back part never.

Kinto needs more than a hook: its ``/batch`` aborts the transaction after a 409 and runs the
subrequests that follow in a new transaction, but it notifies ``ResourceChanged`` once, at the
end, with the changes of both, and its own after-commit hook sits on the first transaction
only. :func:`watch_rollbacks` remembers which changes a rolled-back transaction had made, and
:func:`committed_records` leaves them out, so that what committed is published, and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from notifier.request import current_transaction, outermost

if TYPE_CHECKING:
    from pyramid.events import NewRequest

__all__ = ["after_commit", "committed_records", "watch_rollbacks"]

logger = logging.getLogger("notifier")

_ROLLED_BACK = "notifier.rolled_back"
_WATCH = "notifier.rollback_watch"


def after_commit(request: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the transaction that ``request`` is in has committed, never if
    it rolls back. Without a transaction (no request, or no pyramid_tm, where changes are
    notified only once the response succeeded): now."""
    transaction = current_transaction(request)
    if transaction is None:
        callback()
        return
    transaction.addAfterCommitHook(_call_if_committed, (callback,))


def _call_if_committed(succeeded: bool, callback: Callable[[], None]) -> None:
    if not succeeded:
        return
    try:
        callback()
    except Exception:
        # The commit is done: nothing may reach the request from here.
        logger.exception("publishing after the commit failed")


def committed_records(request: Any, records: list[Any]) -> list[Any]:
    """``records`` (an event's impacted records) without those that a transaction of
    ``request`` made and then rolled back."""
    if getattr(request, "environ", None) is None:
        return records
    rolled_back: dict[int, Any] | None = outermost(request).environ.get(_ROLLED_BACK)
    if not rolled_back:
        return records
    return [record for record in records if id(record) not in rolled_back]


class _RollbackWatch:
    """A transaction synchronizer (see ``transaction.interfaces.ISynchronizer``) that, when a
    transaction of its request ends without committing, remembers the changes that Kinto had
    collected for the request until then: they were rolled back with it."""

    def __init__(self, request: Any) -> None:
        self.request = request

    def newTransaction(self, transaction: Any) -> None:
        pass

    def beforeCompletion(self, transaction: Any) -> None:
        pass

    def afterCompletion(self, transaction: Any) -> None:
        from transaction._transaction import Status  # the status names, as transaction 3-5 has

        if transaction.status == Status.COMMITTED:
            return
        # Kinto's request.bound_data["resource_events"] is an EventCollector whose event_dict
        # maps (cascade level, resource, parent, action) to (payload, impacted, request); the
        # impacted records of later changes are appended to the same lists, as the same dicts
        # (checked on Kinto 26.5). So a change is known by the identity of its record dict,
        # which is kept here with the dict itself, so that the identity stays unique.
        collector = self.request.bound_data.get("resource_events")
        if collector is None:
            return
        rolled_back = self.request.environ.setdefault(_ROLLED_BACK, {})
        for _payload, impacted, _request in collector.event_dict.values():
            for record in impacted:
                rolled_back[id(record)] = record


def watch_rollbacks(event: NewRequest) -> None:
    """A ``NewRequest`` subscriber, for Kinto: watch the transactions of the request, so that
    :func:`committed_records` knows what they rolled back."""
    request = event.request
    if getattr(request, "parent", None) is not None or _WATCH in request.environ:
        return  # a batch's subrequests are in their parent's transactions
    watch = _RollbackWatch(request)
    manager = request.tm
    # The manager holds its synchronizers weakly: the request's environ keeps this one alive.
    request.environ[_WATCH] = watch
    manager.registerSynch(watch)
    request.add_finished_callback(lambda request: _unwatch(manager, watch))


def _unwatch(manager: Any, watch: _RollbackWatch) -> None:
    with contextlib.suppress(KeyError):  # already gone with its thread's manager
        manager.unregisterSynch(watch)
