"""The dead-letter store: messages that could not be handled, kept in Redis with the reason.

Two Redis keys, both readable with redis-cli::

    notifier:dead_letters:letters   a hash: letter id -> the letter, a JSON object
    notifier:dead_letters:order     a sorted set: the letter ids, scored by when they failed

    redis-cli ZRANGE notifier:dead_letters:order 0 -1       # the ids, oldest first
    redis-cli HGET notifier:dead_letters:letters ID         # one letter

A letter is ``{"id", "failed_at", "listener", "attempts", "queue", "reason", "traceback",
"message"}``: the listener that failed for good (``null`` for a message no listener could be
given: a malformed one), how many times it ran, the queue the message came from, why it failed,
and the message as it was received. Adding and removing a letter change both keys in one
transaction; getting or removing one by id does not read the others.

The same Redis counts the redeliveries of the listeners' messages in flight, the bound before a
message whose worker dies every time becomes a dead letter
(:class:`tasks.dispatch.bound.DeliveryBound`)::

    notifier:dead_letters:redeliveries:TASK_ID   a count: how many times the Redis transport
                                                 handed the message out again

A message delivered once has none; a count is deleted when its message's run ends, and lapses
:data:`REDELIVERIES_TTL` after its last redelivery if that end was never seen.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import redis

__all__ = ["REDELIVERIES_TTL", "DeadLetter", "DeadLetters"]

#: How long the redelivery count of a message outlives its last redelivery when the end of its
#: run is never seen (a message revoked, a queue purged, Redis out of reach at that moment):
#: longer than a message stays in flight, retries and their backoff included.
REDELIVERIES_TTL = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message that could not be handled, and why."""

    id: str
    failed_at: float  # Unix time
    reason: str
    message: Any  # as it was received: it may not even be a valid message
    listener: str | None = None  # None: for no listener in particular (replayed to dispatch)
    attempts: int | None = None  # None: not known
    queue: str | None = None  # the queue it was taken from, when known
    traceback: str | None = None

    @property
    def failed_at_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.failed_at, UTC)

    def as_dict(self) -> dict[str, Any]:
        """The letter as a JSON-ready object, in the order a reader wants it."""
        return {
            "id": self.id,
            "failed_at": self.failed_at,
            "listener": self.listener,
            "attempts": self.attempts,
            "queue": self.queue,
            "reason": self.reason,
            "traceback": self.traceback,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, letter_id: str, data: Mapping[str, Any]) -> DeadLetter:
        # Tolerant: a letter written by an older version (or by hand) lacks some fields.
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values.setdefault("reason", "")
        values.setdefault("failed_at", 0.0)
        values.setdefault("message", None)
        return cls(**{**values, "id": letter_id})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class DeadLetters:
    """The dead letters in one Redis, under keys that start with ``key``."""

    def __init__(self, client: redis.Redis, key: str = "notifier:dead_letters") -> None:
        self.client = client
        self.key = key
        self.letters_key = f"{key}:letters"
        self.order_key = f"{key}:order"

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
        attempts: int | None = None,
        queue: str | None = None,
        traceback: str | None = None,
    ) -> DeadLetter:
        """Keep ``message`` with the ``reason`` it could not be handled; return the letter."""
        letter = DeadLetter(
            id=uuid.uuid4().hex,
            failed_at=time.time(),
            reason=reason,
            message=message,
            listener=listener,
            attempts=attempts,
            queue=queue,
            traceback=traceback,
        )
        # What JSON cannot hold (bytes, for one) is kept as its repr.
        data = json.dumps(letter.as_dict(), default=repr)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.letters_key, letter.id, data)
            pipe.zadd(self.order_key, {letter.id: letter.failed_at})
            pipe.execute()
        return letter

    def get(self, letter_id: str) -> DeadLetter | None:
        """The letter ``letter_id``, or None when there is none."""
        raw = self.client.hget(self.letters_key, letter_id)
        return None if raw is None else DeadLetter.from_dict(letter_id, json.loads(raw))

    def remove(self, letter_id: str) -> bool:
        """Remove the letter ``letter_id``; return whether there was one."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.letters_key, letter_id)
            pipe.zrem(self.order_key, letter_id)
            removed, _ = pipe.execute()
        return bool(removed)

    def purge(self) -> int:
        """Remove every letter; return how many there were."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hlen(self.letters_key)
            pipe.delete(self.letters_key, self.order_key)
            count, _ = pipe.execute()
        return int(count)

    def __iter__(self) -> Iterator[DeadLetter]:
        """The letters, oldest first."""
        ids: list[bytes | str] = self.client.zrange(self.order_key, 0, -1)  # type: ignore[assignment]
        for start in range(0, len(ids), 100):
            batch = [_text(letter_id) for letter_id in ids[start : start + 100]]
            raws = self.client.hmget(self.letters_key, batch)
            for letter_id, raw in zip(batch, raws, strict=True):
                if raw is not None:  # removed since the ids were read
                    yield DeadLetter.from_dict(letter_id, json.loads(raw))

    def __len__(self) -> int:
        return int(self.client.hlen(self.letters_key))

    def __contains__(self, letter_id: object) -> bool:
        return isinstance(letter_id, str) and bool(self.client.hexists(self.letters_key, letter_id))

    def count_redelivery(self, task_id: str) -> int:
        """Count one more redelivery of the message of task ``task_id``; return its count."""
        key = self._redeliveries_key(task_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, REDELIVERIES_TTL)
            count, _ = pipe.execute()
        return int(count)

    def redeliveries(self, task_id: str) -> int:
        """How many redeliveries of the message of task ``task_id`` are counted."""
        count = self.client.get(self._redeliveries_key(task_id))
        return int(count) if count is not None else 0

    def forget_redeliveries(self, task_id: str) -> None:
        """Delete the redelivery count of the message of task ``task_id``: its run ended."""
        self.client.delete(self._redeliveries_key(task_id))

    def _redeliveries_key(self, task_id: str) -> str:
        return f"{self.key}:redeliveries:{task_id}"
