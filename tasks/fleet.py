"""The fleet: which live workers know which listeners, so that no event is lost to the
configuration of the worker that happens to take it.

Every worker, once its consumer started, writes what it knows into the dead-letter Redis
(``NOTIFIER_DEAD_LETTERS_URL``), one field per worker of the hash ``notifier:fleet``: its
hostname -> a JSON record of the queues it consumes and of each listener it knows (what
:func:`tasks.listeners.registry.wants` reads: resource names, actions, ``where``, parents; and the
task and queue that run it). It writes it again every third of :data:`FLEET_TTL`; readers leave out,
and delete, the records not written for that long (a dead worker's), and the hash expires with
the last worker. ``redis-cli HGETALL notifier:fleet`` shows them.

At start-up, and whenever the answer changes, a worker compares what it knows with the live
workers that consume the same dispatch queues, and logs an ERROR naming the listeners each one
lacks (:func:`report`).

Dispatch reads the fleet to give each message to the listeners this worker lacks
(:mod:`tasks.dispatch.coverage`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from notifier.wire.message import Message
from tasks.listeners.registry import Listener, Registry, wants

__all__ = [
    "FLEET_KEY",
    "FLEET_TTL",
    "Fleet",
    "ListenerSpec",
    "WorkerRecord",
    "record_of",
    "report",
]

logger = logging.getLogger("notifier")

FLEET_KEY = "notifier:fleet"
#: Seconds after which a worker that did not write its record again is taken for dead.
FLEET_TTL = 30.0


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """What another worker says of a listener it knows: which events it wants, where they go."""

    name: str
    task: str
    queue: str
    resource_names: frozenset[str]
    actions: frozenset[str]
    where: Mapping[str, frozenset[str]] = field(default_factory=dict)
    parents: frozenset[str] = frozenset()

    @classmethod
    def of(cls, listener: Listener) -> ListenerSpec:
        return cls(
            listener.name,
            listener.task.name,
            listener.queue,
            listener.resource_names,
            listener.actions,
            dict(listener.where),
            listener.parents,
        )

    def wants(self, message: Message) -> bool:
        return wants(message, self.resource_names, self.actions, self.where, self.parents)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "queue": self.queue,
            "resource_names": sorted(self.resource_names),
            "actions": sorted(self.actions),
            "where": {key: sorted(values) for key, values in sorted(self.where.items())},
            "parents": sorted(self.parents),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ListenerSpec:
        return cls(
            str(data["name"]),
            str(data["task"]),
            str(data["queue"]),
            frozenset(map(str, data["resource_names"])),
            frozenset(map(str, data["actions"])),
            {str(key): frozenset(map(str, values)) for key, values in data["where"].items()},
            frozenset(map(str, data["parents"])),
        )


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """What one worker announces: the queues it consumes and the listeners it knows."""

    hostname: str
    queues: frozenset[str]  # every queue it consumes, its listeners' included
    dispatch_queues: frozenset[str]  # those it takes dispatch messages from
    listeners: tuple[ListenerSpec, ...]
    dispatch_only: bool = False
    written_at: float = 0.0  # Unix time

    @property
    def names(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.listeners)

    def as_json(self) -> str:
        return json.dumps(
            {
                "hostname": self.hostname,
                "queues": sorted(self.queues),
                "dispatch_queues": sorted(self.dispatch_queues),
                "listeners": [spec.as_dict() for spec in self.listeners],
                "dispatch_only": self.dispatch_only,
                "written_at": self.written_at,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerRecord:
        data = json.loads(raw)
        return cls(
            str(data["hostname"]),
            frozenset(map(str, data["queues"])),
            frozenset(map(str, data["dispatch_queues"])),
            tuple(ListenerSpec.from_dict(spec) for spec in data["listeners"]),
            bool(data["dispatch_only"]),
            float(data["written_at"]),
        )


def record_of(
    hostname: str,
    consumed: Iterable[str],
    registry: Registry,
    routing_queues: Collection[str],
    *,
    only_dispatches: bool = False,
) -> WorkerRecord:
    """The record of a worker that consumes ``consumed`` and knows ``registry``'s listeners:
    its dispatch queues are those of the routing table and the others that are no listener's."""
    queues = frozenset(consumed)
    listener_queues = {listener.queue for listener in registry}
    return WorkerRecord(
        hostname,
        queues,
        frozenset(q for q in queues if q in routing_queues or q not in listener_queues),
        tuple(ListenerSpec.of(listener) for listener in registry),
        only_dispatches,
    )


class Fleet:
    """The records of the live workers, in one Redis (see the module's doc)."""

    def __init__(
        self,
        client: redis.Redis,
        key: str = FLEET_KEY,
        ttl: float = FLEET_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self.clock = clock

    @classmethod
    def from_url(cls, url: str) -> Fleet:
        """The fleet in the Redis at ``url``; each Redis operation waits 2 s at most."""
        return cls(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2))

    def announce(self, record: WorkerRecord) -> None:
        """Write ``record`` (again): its worker is alive for ``ttl`` more seconds."""
        data = replace(record, written_at=self.clock()).as_json()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, record.hostname, data)
            # The whole hash goes with the last worker; each live one pushes this back.
            pipe.expire(self.key, int(self.ttl * 2) + 1)
            pipe.execute()

    def leave(self, hostname: str) -> None:
        """Remove the record of ``hostname`` (a worker that stops)."""
        self.client.hdel(self.key, hostname)

    def live(self) -> list[WorkerRecord]:
        """The records of the live workers; those of dead workers, or unreadable, are
        deleted."""
        raw: dict[bytes, bytes] = self.client.hgetall(self.key)  # type: ignore[assignment]
        oldest = self.clock() - self.ttl
        records, stale = [], []
        for hostname, data in raw.items():
            try:
                record = WorkerRecord.from_json(data)
            except (ValueError, KeyError, TypeError, AttributeError):
                stale.append(hostname)
                continue
            if record.written_at < oldest:
                stale.append(hostname)
            else:
                records.append(record)
        if stale:
            self.client.hdel(self.key, *stale)
        return sorted(records, key=lambda record: record.hostname)


def report(me: WorkerRecord, live: Iterable[WorkerRecord]) -> list[tuple[int, str]]:
    """What a worker logs (level, line) of the live workers that consume its dispatch queues
    and know other listeners than it does: the ones each lacks."""
    lacking: dict[str, list[str]] = defaultdict(list)  # listener -> the workers that know it
    lines: list[tuple[int, str]] = []
    others = [record for record in live if record.hostname != me.hostname]
    for other in others:
        shared = me.dispatch_queues & other.dispatch_queues
        if not shared:
            continue
        for name in sorted(other.names - me.names):
            lacking[name].append(other.hostname)
        if other.dispatch_only or not me.names - other.names:
            continue
        lines.append(
            (
                logging.ERROR,
                f"worker {other.hostname} consumes {', '.join(sorted(shared))} as this worker "
                f"({me.hostname}) does, but lacks the listeners "
                f"{', '.join(sorted(me.names - other.names))}: the events it takes are handed "
                "to their queues while this worker lives; load the same listeners "
                "(NOTIFIER_LISTENERS) in every worker",
            )
        )
    if me.dispatch_only:
        known = sorted({name for other in others for name in other.names})
        lines.insert(
            0,
            (
                logging.INFO,
                f"this worker ({me.hostname}) only dispatches: it hands each event to the "
                f"listeners of the live workers ({', '.join(known) or 'none yet'})",
            ),
        )
    elif lacking:
        named = ", ".join(
            f"{name} (known by {', '.join(hosts)})" for name, hosts in lacking.items()
        )
        lines.insert(
            0,
            (
                logging.ERROR,
                f"this worker ({me.hostname}) lacks listeners that other workers consuming its "
                f"queues know: {named}; it hands the events they want to their queues, but "
                "load the same listeners (NOTIFIER_LISTENERS) in every worker",
            ),
        )
    return lines
