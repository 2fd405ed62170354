"""Reading what the listeners of tests/integration/listeners.py recorded in Redis."""

from __future__ import annotations

import json

import redis

from tests.support.processes import wait_until


class Received:
    """What the recording listeners of tests/integration/listeners.py received, read from Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def by(self, listener: str) -> list[dict]:
        return [json.loads(item) for item in self.client.lrange(f"received:{listener}", 0, -1)]

    def about(self, listener: str, title: str) -> list[dict]:
        return [
            received
            for received in self.by(listener)
            for change in received["impacted_records"]
            if title in (change.get("new", {}).get("title"), change.get("old", {}).get("title"))
        ]

    def wait_for(
        self, listener: str, title: str, count: int = 1, timeout: float = 20
    ) -> list[dict]:
        wait_until(
            lambda: len(self.about(listener, title)) >= count,
            timeout,
            f"{listener} receiving {count} events about {title!r}",
        )
        return self.about(listener, title)
