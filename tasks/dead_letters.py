"""The dead-letter store: messages that could not be handled, kept in Redis with the reason."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import redis

__all__ = ["DeadLetter", "DeadLetters"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    reason: str
    message: Any  # as it was received: it may not even be a valid message
    listener: str | None
    traceback: str | None
    failed_at: float


class DeadLetters:
    """A Redis list of dead letters, newest last, under ``key``."""

    def __init__(self, client: redis.Redis, key: str = "notifier:dead_letters") -> None:
        self.client = client
        self.key = key

    @classmethod
    def from_url(cls, url: str) -> DeadLetters:
        """The store in the Redis at ``url``; each Redis operation waits 5 s at most."""
        return cls(redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5))

    def add(
        self,
        reason: str,
        message: Any,
        *,
        listener: str | None = None,
        traceback: str | None = None,
    ) -> DeadLetter:
        letter = DeadLetter(
            id=uuid.uuid4().hex,
            reason=reason,
            message=message,
            listener=listener,
            traceback=traceback,
            failed_at=time.time(),
        )
        self.client.rpush(self.key, json.dumps(asdict(letter), default=repr))
        return letter

    def __iter__(self) -> Iterator[DeadLetter]:
        for raw in self.client.lrange(self.key, 0, -1):
            yield DeadLetter(**json.loads(raw))

    def __len__(self) -> int:
        return int(self.client.llen(self.key))
