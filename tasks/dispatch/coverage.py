"""Dispatch's look beyond the listeners of its own worker: no event is lost to the
configuration of the worker that happens to take it.

Each message is matched against the listeners that other live workers know and this one does
not (what they announce to the fleet, :mod:`tasks.fleet`), with the rule this worker's own
listeners follow (:func:`tasks.listeners.registry.wants`). One that wants the message gets it all
the same: its task is sent to its queue, which only the workers that know it consume (logged at
ERROR with the event's id; at INFO in a worker that only dispatches). When none of them
consumes that queue, or the broker does not take the task, the message is kept as a dead
letter naming the listener, and ``notifier-dead-letters replay`` sends it there later. A
message that no listener of any live worker wants is counted, and logged at WARNING once per
resource and action.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import redis

from notifier.wire.message import Message
from tasks.dead_letters import DeadLetters
from tasks.dispatch.delivery import listener_task_id
from tasks.dispatch.fan_out import SEND_ERRORS
from tasks.fleet import Fleet, ListenerSpec
from tasks.listeners.registry import Listener, Registry

__all__ = ["VIEW_MAX_AGE", "Coverage"]

logger = logging.getLogger("notifier")

#: How long a worker process reuses what it read of the fleet, in seconds: a worker that
#: starts with a listener the others lack is known to them this long after it announced it.
VIEW_MAX_AGE = 2.0


@dataclass(frozen=True, slots=True)
class _Elsewhere:
    spec: ListenerSpec
    known_by: tuple[str, ...]
    consumed: bool  # some worker that knows it consumes its queue


def _send(registry: Registry) -> Callable[[ListenerSpec, Message], None]:
    def send(spec: ListenerSpec, message: Message) -> None:
        registry.app.send_task(
            spec.task,
            args=(message.as_dict(),),
            task_id=listener_task_id(message.task_id, spec.name),
            queue=spec.queue,
        )

    return send


class Coverage:
    """Dispatch's look beyond this worker's listeners (see the module's doc): the listeners that
    the live workers of ``fleet`` know and ``registry`` does not. A worker has one, built at its
    start (:func:`tasks.wiring.wire`), which reads the fleet again once its view is older than
    ``max_age`` seconds."""

    def __init__(
        self,
        fleet: Fleet,
        registry: Registry,
        dead_letters: DeadLetters,
        send: Callable[[ListenerSpec, Message], None] | None = None,
        *,
        only_dispatches: bool = False,
        max_age: float = VIEW_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.registry = registry
        self.dead_letters = dead_letters
        self.send = send or _send(registry)
        self.only_dispatches = only_dispatches
        self.max_age = max_age
        self.clock = clock
        #: Messages that no listener of any live worker wanted, by (resource_name, action).
        self.unwanted: Counter[tuple[str, str]] = Counter()
        self._elsewhere: list[_Elsewhere] = []
        self._read_at: float | None = None

    def cover(
        self, message: Message, data: Any, wanted: Collection[Listener], queue: str | None
    ) -> list[str]:
        """Hand ``message`` to the listeners that want it and that other live workers know
        and this one does not (``wanted``: those of this one), or keep it as a dead letter
        naming them; return their names. Count it when nobody wants it. Raises what the dead
        letters raise when they are out of reach."""
        elsewhere = [entry for entry in self._view() if entry.spec.wants(message)]
        if not elsewhere:
            if not wanted:
                self._count_unwanted(message)
            return []
        for entry in elsewhere:
            self._hand_over(entry, message, data, queue)
        return [entry.spec.name for entry in elsewhere]

    def _hand_over(self, entry: _Elsewhere, message: Message, data: Any, queue: str | None) -> None:
        spec = entry.spec
        reason = (
            f"listener {spec.name}, known by worker(s) {', '.join(entry.known_by)}, is not "
            "loaded in this worker"
        )
        if entry.consumed:
            try:
                self.send(spec, message)
            except SEND_ERRORS as exc:
                reason += f", and its queue {spec.queue} did not take its task: {exc}"
            else:
                logger.log(
                    logging.INFO if self.only_dispatches else logging.ERROR,
                    "event %s: %s: sent to its queue %s",
                    message.event_id,
                    reason,
                    spec.queue,
                )
                return
        else:
            reason += f", and none of them consumes its queue {spec.queue}"
        letter = self.dead_letters.add(reason, data, listener=spec.name, queue=queue)
        logger.error("event %s: %s; kept as dead letter %s", message.event_id, reason, letter.id)

    def _count_unwanted(self, message: Message) -> None:
        pair = (message.resource_name, message.action)
        self.unwanted[pair] += 1
        if self.unwanted[pair] == 1:
            logger.warning(
                "no listener of any live worker wants %s events of %s (event %s): such messages "
                "are acknowledged without reaching any listener; logged once per resource and "
                "action",
                message.action,
                message.resource_name,
                message.event_id,
            )

    def _view(self) -> list[_Elsewhere]:
        # The listeners other live workers know and this one does not, read again when older
        # than max_age.
        now = self.clock()
        if self._read_at is not None and now - self._read_at < self.max_age:
            return self._elsewhere
        self._read_at = now
        try:
            live = self.fleet.live()
        except (redis.RedisError, OSError) as exc:
            logger.warning("could not read the fleet's listeners (%s): using the last read", exc)
            return self._elsewhere
        known = {listener.name for listener in self.registry}
        specs: dict[str, ListenerSpec] = {}
        known_by: dict[str, list[str]] = defaultdict(list)
        consumed: set[str] = set()
        for record in live:
            for spec in record.listeners:
                if spec.name in known:
                    continue
                specs.setdefault(spec.name, spec)
                known_by[spec.name].append(record.hostname)
                if spec.queue in record.queues:
                    consumed.add(spec.name)
        self._elsewhere = [
            _Elsewhere(spec, tuple(known_by[name]), name in consumed)
            for name, spec in sorted(specs.items())
        ]
        return self._elsewhere
