"""The spool's fallback: messages no spool file could take, held in memory, in order.

When this process's file cannot take a message (a full or read-only disk), the message waits
here, logged at CRITICAL with its id, and moves to the file once the file takes messages
again. The queue is bounded: a message it has no room for either is lost, logged at CRITICAL
as lost. What it holds is lost with the process, hence the move to disk at each flush.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

from notifier.wire.message import Message

__all__ = ["MemoryQueue"]

logger = logging.getLogger("notifier")


class MemoryQueue:
    """At most ``limit`` messages (each with its queue), oldest first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._messages: deque[tuple[Message, str]] = deque()

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[tuple[Message, str]]:
        return iter(self._messages)

    def hold(self, message: Message, queue: str, why: str) -> bool:
        """Hold ``message`` for ``queue`` behind the others, saying ``why`` it is not on disk;
        ``False`` when there is no room for it: it is lost."""
        identity = f"event {message.task_id} ({message.action} {message.resource_name}) to {queue}"
        if len(self._messages) >= self.limit:
            logger.critical(
                "lost %s: %s, and %d messages held in memory already, the most it holds",
                identity,
                why,
                len(self._messages),
            )
            return False
        self._messages.append((message, queue))
        logger.critical(
            "kept %s in memory only, lost if this process stops before the broker takes it: %s",
            identity,
            why,
        )
        return True

    def first(self) -> tuple[Message, str]:
        """The oldest message, left in place (only a flush takes from the front)."""
        return self._messages[0]

    def drop_first(self) -> None:
        """Forget the oldest message: the broker took it."""
        self._messages.popleft()

    def clear(self) -> None:
        """Forget every message: a spool file took them."""
        self._messages.clear()
