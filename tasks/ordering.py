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
``parents=`` also receives parent deletes (a collection, a bucket); such a delete is an
object's version too, for every object under it: a change older than the delete of its parent
is never applied after it, and the delete waits for the changes under it that are running.

Everything lives in Redis, one hash per object (and per deleted parent), changed only by two
Lua scripts, so that the check and the claim are one atomic step across worker processes:

    notifier:ordered:<listener>:object:<resource>:<parent>:<id>   v (version), lock, until
    notifier:ordered:<listener>:scope:<parent>                    v, lock, until, wait...
    notifier:ordered:<listener>:scope:<parent>:readers            run id -> until

What it costs: two Redis round trips per run of an ordered listener (claim, then release),
one key per object the listener has seen (about 150 bytes, kept ``retention`` seconds after
the object last changed: a change older than that is no longer recognised as old), and waiting:
two events on one object, or a parent delete and a change under that parent, run one after
the other. A run that cannot claim its objects within ``wait`` seconds is sent back to its
queue (without counting as an attempt) and tried again a little later.

A claim belongs to the run of a task id: the retry of a failed run, or the redelivery of a
message whose worker died mid-run, takes over its own claim at once; a claim nobody takes
over expires after the listener's time limit.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import redis

from notifier.events import parent_of
from tasks.event import Event, scopes_above

__all__ = ["Busy", "Claim", "OrderGuard", "version_of"]

logger = logging.getLogger("notifier")

#: How long a version is remembered after the object's last change (30 days).
RETENTION = 30 * 24 * 3600

# Both scripts take ARGV: run id, claim ttl (ms), retention (s), then the claim as JSON:
# {"objects": [{"key", "versions": [...], "ancestors": [scope keys]}],
#  "drops": [{"key", "version"}]}. Versions are strings that sort like the versions they are.
_CLAIM = """
local token, ttl, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local claim = cjson.decode(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function held(key, field, until_field)
  local values = redis.call('HMGET', key, field, until_field)
  return values[1] and values[1] ~= token and tonumber(values[2]) > now
end
local function read(key)
  local entries = redis.call('HGETALL', key .. ':readers')
  for i = 1, #entries, 2 do
    if entries[i] ~= token and tonumber(entries[i + 1]) > now then return true end
  end
  return false
end
for _, object in ipairs(claim.objects) do
  if held(object.key, 'lock', 'until') then return {0} end
  for _, scope in ipairs(object.ancestors) do
    if held(scope, 'lock', 'until') then return {0} end
    -- A run already under this parent (a redelivery) may finish: the delete waits for it.
    local reading = redis.call('HEXISTS', scope .. ':readers', token) == 1
    if not reading and held(scope, 'wait', 'wait_until') then return {0} end
  end
end
for _, drop in ipairs(claim.drops) do
  if held(drop.key, 'lock', 'until') then return {0} end
  if read(drop.key) then
    -- Changes under this parent are running: new ones wait behind this delete.
    redis.call('HSET', drop.key, 'wait', token, 'wait_until', now + math.min(ttl, 10000))
    redis.call('EXPIRE', drop.key, retention)
    return {0}
  end
end
local expires = now + ttl
local fresh = {1}
for _, object in ipairs(claim.objects) do
  redis.call('HSET', object.key, 'lock', token, 'until', expires)
  redis.call('EXPIRE', object.key, retention)
  local floor = redis.call('HGET', object.key, 'v') or ''
  for _, scope in ipairs(object.ancestors) do
    redis.call('HSET', scope .. ':readers', token, expires)
    redis.call('PEXPIRE', scope .. ':readers', ttl)
    local dropped = redis.call('HGET', scope, 'v')
    if dropped and dropped > floor then floor = dropped end
  end
  for _, version in ipairs(object.versions) do
    table.insert(fresh, version > floor and 1 or 0)
  end
end
for _, drop in ipairs(claim.drops) do
  redis.call('HSET', drop.key, 'lock', token, 'until', expires)
  redis.call('HDEL', drop.key, 'wait', 'wait_until')
  redis.call('EXPIRE', drop.key, retention)
  local dropped = redis.call('HGET', drop.key, 'v') or ''
  table.insert(fresh, drop.version > dropped and 1 or 0)
end
return fresh
"""

# The same claim, its objects' and drops' "version" now the newest one the listener applied
# (or absent: nothing applied). Releases what this run holds.
_RELEASE = """
local token, retention = ARGV[1], tonumber(ARGV[3])
local claim = cjson.decode(ARGV[4])
local function release(key, version)
  if redis.call('HGET', key, 'lock') ~= token then return end
  if version then
    local current = redis.call('HGET', key, 'v')
    if not current or version > current then redis.call('HSET', key, 'v', version) end
  end
  redis.call('HDEL', key, 'lock', 'until')
  redis.call('EXPIRE', key, retention)
end
for _, object in ipairs(claim.objects) do
  release(object.key, object.version)
  for _, scope in ipairs(object.ancestors) do redis.call('HDEL', scope .. ':readers', token) end
end
for _, drop in ipairs(claim.drops) do release(drop.key, drop.version) end
return 1
"""


class Busy(Exception):
    """Raised when another run holds an object of the event longer than the guard waits."""


def version_of(last_modified: Any, position: int) -> str:
    """A change's version as a string that sorts like it: its ``last_modified``, then its
    position in its request."""
    try:
        milliseconds = max(int(last_modified), 0)
    except (TypeError, ValueError):
        milliseconds = 0
    return f"{milliseconds:016d}.{position:08d}"


def _canonical(items: Iterable[tuple[str, Any]]) -> str:
    return json.dumps(dict(items), sort_keys=True, separators=(",", ":"), default=str)


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
    changes: list[_Change]
    drops: list[_Change]
    fresh: list[bool]

    @property
    def new_event(self) -> Event | None:
        """The event with only its new changes; None when every change is old."""
        kept = sorted(
            change.index
            for change, new in zip([*self.changes, *self.drops], self.fresh, strict=True)
            if new
        )
        if len(kept) == len(self.event.impacted_records):
            return self.event
        if not kept:
            return None
        return replace(
            self.event,
            impacted_records=[self.event.impacted_records[i] for i in kept],
            positions=[self.event.positions[i] for i in kept],
        )


class OrderGuard:
    """The per-object versions of ordered listeners, in one Redis database."""

    def __init__(
        self,
        client: redis.Redis,
        retention: int = RETENTION,
        wait: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.retention = retention
        self.wait = wait
        self._sleep = sleep
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

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
        ttl: float = 360.0,
    ) -> Claim:
        """Claim the objects ``event`` changes for a run of ``listener``, waiting up to
        ``wait`` seconds for other runs that hold some of them (:class:`Busy` after that).

        ``token`` names the run: a task id, the same for its retries and redeliveries.
        """
        prefix = f"notifier:ordered:{listener}:"
        parent = parent_of(event.payload)
        changes: list[_Change] = []
        drops: list[_Change] = []
        is_drop = event.action == "delete" and event.resource_name in set(parents)
        records = zip(event.impacted_records, event.positions, strict=True)
        for index, (record, position) in enumerate(records):
            new, old = record.get("new") or {}, record.get("old") or {}
            object_id = new.get("id", old.get("id"))
            if object_id is None:
                continue
            last_modified = new.get("last_modified", event.payload.get("timestamp"))
            version = version_of(last_modified, position)
            if is_drop:
                scope = (*parent, (f"{event.resource_name}_id", object_id))
                drops.append(_Change(index, f"{prefix}scope:{_canonical(sorted(scope))}", version))
            else:
                key = f"{prefix}object:{event.resource_name}:{_canonical(parent)}:{object_id}"
                changes.append(_Change(index, key, version))
        ancestors = [f"{prefix}scope:{_canonical(scope)}" for scope in scopes_above(parent)]
        objects: dict[str, list[str]] = {}
        for change in changes:
            objects.setdefault(change.key, []).append(change.version)
        spec = {
            "objects": [
                {"key": key, "versions": versions, "ancestors": ancestors}
                for key, versions in objects.items()
            ],
            "drops": [{"key": drop.key, "version": drop.version} for drop in drops],
        }
        # The flags come back per object key, in the order of the spec.
        ordered_changes = [c for key in objects for c in changes if c.key == key]
        token = token or uuid.uuid4().hex
        fresh = self._run_claim(token, spec, ttl)
        return Claim(event, token, spec, ordered_changes, drops, fresh)

    def _run_claim(self, token: str, spec: dict[str, Any], ttl: float) -> list[bool]:
        arguments: list[str | int] = [token, int(ttl * 1000), self.retention, json.dumps(spec)]
        deadline = time.monotonic() + self.wait
        pause = 0.005
        while True:
            reply = self._claim(args=arguments)
            if reply[0] == 1:
                return [bool(flag) for flag in reply[1:]]
            if time.monotonic() >= deadline:
                raise Busy(f"objects held by another run for more than {self.wait} s")
            self._sleep(pause)
            pause = min(pause * 2, 0.2)

    def release(self, claim: Claim, *, applied: bool) -> None:
        """Let other runs have the claimed objects; with ``applied``, remember the versions
        the listener applied, so that older ones are not applied after them."""
        spec: dict[str, Any] = {"objects": [], "drops": []}
        count = len(claim.changes)
        newest: dict[str, str] = {}
        if applied:
            for change, new in zip(claim.changes, claim.fresh[:count], strict=True):
                if new and change.version > newest.get(change.key, ""):
                    newest[change.key] = change.version
        # A version left out (not null, which Lua would take for true) records nothing.
        for entry in claim.spec["objects"]:
            version = newest.get(entry["key"])
            spec["objects"].append({**entry, **({"version": version} if version else {})})
        for drop, new in zip(claim.drops, claim.fresh[count:], strict=True):
            kept = {"version": drop.version} if applied and new else {}
            spec["drops"].append({"key": drop.key, **kept})
        self._release(args=[claim.token, 0, self.retention, json.dumps(spec)])
