"""Per-object order for the listeners that ask for it: ``@listener(..., ordered=True)``.

Celery reorders messages (prefetch, concurrency, retries, redelivery after a crash), so a
listener may see an object's update after its delete. An ordered listener never applies an
older version of an object after a newer one: before it runs, the guard claims the objects its
event changes and keeps only the changes newer than the last version the listener applied;
after it succeeded, the guard records those versions.

An object is one record: its resource, its parent (the payload's matchdict values) and its id.
Its version is its ``last_modified`` (a delete's tombstone, or the payload's ``timestamp`` when
a record carries none), then its position in the request: the order of a Kinto ``/batch``
[delete x, re-create x, delete x] survives the merge of its events. A listener with
``parents=`` also receives parent deletes (a collection, a bucket); such a delete is a version
of everything under it: a change older than the delete of its parent is not applied after it.
A delete waits for the changes under it that are running, and new ones wait behind it.

Everything lives in Redis, one hash per object (and per deleted parent), changed only by Lua
scripts, so that the check and the claim are one atomic step across worker processes:

    notifier:ordered:<listener>:object:<resource>:<parent>:<id>   v (version), lock, until
    notifier:ordered:<listener>:scope:<parent>                    v, lock, until, wait...
    notifier:ordered:<listener>:scope:<parent>:readers            run -> until

A claim is a lease, held by one run (a random token) for ``lease`` seconds and renewed by a
thread of the process while the run goes on: a run whose worker died lets go of its objects
when its lease lapses, and two deliveries of one message (a redelivery while the first still
runs) are two runs that take turns. The scripts name keys they were not given, so they need one
Redis server (not a Cluster), version 5 or newer.

Beside the other internals notifier relies on: docs/internals.md,
"The ordered listeners' guard".
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

import redis

from notifier.errors import ObjectsBusy
from notifier.wire.payload import parent_of
from tasks.listeners.event import Event, canonical, change_id, change_version, scopes_above

__all__ = ["Claim", "OrderGuard", "version_of"]

logger = logging.getLogger("notifier")

#: How long a version is remembered after the object's last change (30 days).
RETENTION = 30 * 24 * 3600


# The guard's Lua scripts, beside this module: each is ordered_preamble.lua (its ARGV) then
# its own.
@cache
def _script(name: str) -> str:
    here = resources.files(__package__ or "tasks.listeners")
    return (here / "ordered_preamble.lua").read_text() + (here / name).read_text()


def version_of(last_modified: Any, position: int) -> str:
    """A change's version as a string that sorts like it: its ``last_modified``, then its
    position in its request."""
    try:
        milliseconds = max(int(last_modified), 0)
    except (TypeError, ValueError):
        milliseconds = 0
    return f"{milliseconds:016d}.{position:08d}"


@dataclass(frozen=True, slots=True)
class _Change:
    index: int  # in the event's impacted records
    key: str
    version: str


@dataclass(slots=True)
class Claim:
    """What one run of an ordered listener claimed: the event's changes that are new to the
    listener, as the event it should receive."""

    event: Event
    token: str
    spec: dict[str, Any]
    changes: list[_Change]  # objects' changes then drops, in the order of the flags
    fresh: list[bool]

    @property
    def new_event(self) -> Event | None:
        """The event with only its new changes; None when every change is old."""
        flags = zip(self.changes, self.fresh, strict=True)
        kept = sorted(change.index for change, new in flags if new)
        if len(kept) == len(self.event.impacted_records):
            return self.event
        if not kept:
            return None
        return replace(
            self.event,
            impacted_records=[self.event.impacted_records[i] for i in kept],
            positions=[self.event.positions[i] for i in kept],
        )

    def applied(self) -> dict[str, str]:
        """The newest new version of each claimed key."""
        newest: dict[str, str] = {}
        for change, new in zip(self.changes, self.fresh, strict=True):
            if new and change.version > newest.get(change.key, ""):
                newest[change.key] = change.version
        return newest


def _grouped(changes: list[_Change]) -> dict[str, list[_Change]]:
    # One entry per key, in the order keys first appear: the scripts flag versions key by key.
    by_key: dict[str, list[_Change]] = {}
    for change in changes:
        by_key.setdefault(change.key, []).append(change)
    return by_key


class OrderGuard:
    """The per-object versions of ordered listeners, in one Redis database.

    ``lease``: seconds a claim lasts unless renewed (a dead run's objects are free after it);
    ``wait``: seconds a claim waits for a busy object before :class:`ObjectsBusy`.
    """

    def __init__(
        self,
        client: redis.Redis,
        retention: int = RETENTION,
        wait: float = 2.0,
        lease: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.retention = retention
        self.wait = wait
        self.lease = lease
        self._sleep = sleep
        self._claim = client.register_script(_script("ordered_claim.lua"))
        self._release = client.register_script(_script("ordered_release.lua"))
        self._renew = client.register_script(_script("ordered_renew.lua"))
        self._running: dict[str, Claim] = {}
        self._renewer: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> OrderGuard:
        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        return cls(client, **options)

    def claim(
        self,
        listener: str,
        event: Event,
        *,
        parents: Iterable[str] = (),
        token: str | None = None,
        ttl: float | None = None,
    ) -> Claim:
        """Claim the objects ``event`` changes for one run of ``listener``, waiting up to
        ``wait`` seconds for other runs that hold some of them (then :class:`ObjectsBusy`).

        ``token`` names the run (default: a new one); ``ttl`` the lease (default: ``lease``).
        """
        prefix = f"notifier:ordered:{listener}:"
        parent = parent_of(event.payload)
        objects: list[_Change] = []
        drops: list[_Change] = []
        is_drop = event.action == "delete" and event.resource_name in set(parents)
        records = zip(event.impacted_records, event.positions, strict=True)
        for index, (record, position) in enumerate(records):
            object_id = change_id(record)
            if object_id is None:
                continue
            version = version_of(change_version(record, event.payload), position)
            if is_drop:
                scope = (*parent, (f"{event.resource_name}_id", object_id))
                drops.append(_Change(index, f"{prefix}scope:{canonical(scope)}", version))
            else:
                key = f"{prefix}object:{event.resource_name}:{canonical(parent)}:{object_id}"
                objects.append(_Change(index, key, version))
        ancestors = [f"{prefix}scope:{canonical(scope)}" for scope in scopes_above(parent)]
        by_object, by_drop = _grouped(objects), _grouped(drops)
        spec = {
            "objects": [
                {"key": key, "versions": [c.version for c in group], "ancestors": ancestors}
                for key, group in by_object.items()
            ],
            "drops": [
                {"key": key, "versions": [c.version for c in group]}
                for key, group in by_drop.items()
            ],
        }
        changes = [c for group in (*by_object.values(), *by_drop.values()) for c in group]
        token = token or uuid.uuid4().hex
        lease = self.lease if ttl is None else ttl
        fresh = self._run_claim(token, spec, lease)
        return Claim(event, token, spec, changes, fresh)

    def _arguments(self, token: str, spec: dict[str, Any], lease: float) -> list[str | int]:
        return [token, max(int(lease * 1000), 1), self.retention, json.dumps(spec)]

    def _run_claim(self, token: str, spec: dict[str, Any], lease: float) -> list[bool]:
        arguments = self._arguments(token, spec, lease)
        deadline = time.monotonic() + self.wait
        pause = 0.005
        while True:
            reply = self._claim(args=arguments)
            if reply[0] == 1:
                return [bool(flag) for flag in reply[1:]]
            if time.monotonic() >= deadline:
                raise ObjectsBusy(f"objects held by another run for more than {self.wait} s")
            self._sleep(pause)
            pause = min(pause * 2, 0.2)

    def release(self, claim: Claim, *, applied: bool) -> None:
        """Let other runs have the claimed objects; with ``applied``, remember the versions
        the listener applied, so that older ones are not applied after them."""
        newest = claim.applied() if applied else {}
        spec: dict[str, list[dict[str, Any]]] = {"objects": [], "drops": []}
        for kind, entries in spec.items():
            for entry in claim.spec[kind]:
                released = {key: value for key, value in entry.items() if key != "versions"}
                # A version left out (not null, which Lua takes for true) records nothing.
                if entry["key"] in newest:
                    released["version"] = newest[entry["key"]]
                entries.append(released)
        self._release(args=self._arguments(claim.token, spec, self.lease))

    @contextmanager
    def holding(self, claim: Claim) -> Iterator[None]:
        """Keep ``claim``'s lease alive while the body runs (a thread renews it)."""
        with self._lock:
            self._running[claim.token] = claim
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(
                    target=self._renew_leases, name="notifier-order-leases", daemon=True
                )
                self._renewer.start()
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(claim.token, None)

    def _renew_leases(self) -> None:
        # One thread per process renews every running claim, a third of a lease apart.
        while True:
            time.sleep(self.lease / 3)
            with self._lock:
                claims = list(self._running.values())
            for claim in claims:
                try:
                    self._renew(args=self._arguments(claim.token, claim.spec, self.lease))
                except (redis.RedisError, OSError):
                    logger.warning("could not renew the lease of an ordered run", exc_info=True)
