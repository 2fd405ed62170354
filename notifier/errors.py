"""The errors notifier raises, on both sides of the broker.

This module imports nothing from Pyramid or Celery: the worker side uses it too.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ListenerError",
    "ListenersNotSent",
    "MalformedMessage",
    "NotifierError",
    "ObjectsBusy",
    "OutboxError",
    "SpoolFull",
]


class NotifierError(Exception):
    """Raised for nothing by itself: the root of every error notifier raises."""


class ConfigurationError(NotifierError, ValueError):
    """Raised at start-up when a setting has a value notifier cannot use.

    The message names the setting, the value it was given (``None``: none) and what is allowed.
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        if value is None:
            super().__init__(f"{key} is missing: {allowed}")
        else:
            super().__init__(f"{key} = {value!r} is not valid: {allowed}")


class MalformedMessage(NotifierError, ValueError):
    """Raised when a message taken from a queue does not follow the wire contract."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ListenerError(NotifierError, TypeError):
    """Raised when ``@listener`` is applied with arguments it cannot accept."""


class ListenersNotSent(NotifierError):
    """Raised by dispatch when the broker did not take the message for some listeners."""

    def __init__(self, listeners: list[str]) -> None:
        self.listeners = listeners
        super().__init__(f"the message could not be sent to {', '.join(listeners)}")


class ObjectsBusy(NotifierError):
    """Raised when other runs of an ordered listener hold an event's objects for longer than
    the guard waits."""


class OutboxError(NotifierError):
    """Raised inside a transaction when its messages cannot be written to the outbox: the
    transaction must not commit its changes without them."""


class SpoolFull(NotifierError):
    """Raised by ``Spool.write`` when neither the disk nor memory can hold a message: it is
    lost."""
