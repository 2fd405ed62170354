"""Kinto's ``/__heartbeat__`` entries for notifier: the broker, and the outbox when used.

Kinto runs each entry of ``registry.heartbeats`` on every ``GET /__heartbeat__`` and answers 503
when one says False. ``notifier`` pings the broker (one command, bounded by
``notifier.publish_timeout``): False while it does not answer, although writes go on (the spool
or the outbox keeps their messages), so that monitoring sees it. ``notifier_outbox`` reads the
outbox table: False when it cannot, or when a row has waited longer than twice
``notifier.outbox_relay_after`` (no process is publishing what committed). A listener
configured the Kinto way (``kinto.event_listeners = celery``) adds ``notifier_celery`` and
``notifier_celery_outbox``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from notifier.spool.log import cause

if TYPE_CHECKING:
    from notifier.outbox.relay import Outbox
    from notifier.subscriber import Subscriber


@runtime_checkable
class Pingable(Protocol):
    """A publisher that can check that its broker answers (``CeleryPublisher``)."""

    def ping(self) -> None: ...


__all__ = ["Pingable", "add_heartbeats", "broker_heartbeat", "outbox_heartbeat"]

logger = logging.getLogger("notifier")


def add_heartbeats(registry: Any, subscriber: Subscriber, name: str) -> None:
    """Add ``subscriber``'s entries to Kinto's heartbeat (``registry.heartbeats``, when there
    is one): ``name``, its broker, and ``<name>_outbox``, its outbox when it writes one."""
    heartbeats = getattr(registry, "heartbeats", None)
    if not isinstance(heartbeats, dict):
        return  # not in Kinto
    if isinstance(subscriber.publisher, Pingable):
        heartbeats[name] = broker_heartbeat(subscriber.publisher)
    if subscriber.outbox is not None:
        heartbeats[f"{name}_outbox"] = outbox_heartbeat(subscriber.outbox)


def broker_heartbeat(publisher: Pingable) -> Callable[[Any], bool]:
    """The heartbeat entry of ``publisher``'s broker."""

    def notifier(request: Any) -> bool:
        try:
            publisher.ping()
        except Exception as exc:  # whatever the broker's client raises: the answer is False
            logger.warning("heartbeat: the broker does not answer (%s)", cause(exc))
            return False
        return True

    return notifier


def outbox_heartbeat(outbox: Outbox) -> Callable[[Any], bool]:
    """The heartbeat entry of ``outbox``: readable, and nothing waiting too long in it."""

    def notifier_outbox(request: Any) -> bool:
        try:
            count, oldest = outbox.waiting()
        except Exception as exc:  # whatever the database raises: the answer is False
            logger.warning("heartbeat: the outbox cannot be read (%s)", cause(exc))
            return False
        if oldest is not None and oldest > 2 * outbox.relay_after:
            logger.warning(
                "heartbeat: %d messages in the outbox, the oldest waiting for %.0f s", count, oldest
            )
            return False
        return True

    return notifier_outbox
