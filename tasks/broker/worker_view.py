"""What a worker's main process and its pool processes tell each other about notifier's fast
paths.

Celery's control commands and its task events live in the worker's main process: ``rate_limit``
sets a task's limit there, ``revoke`` adds an id to its revoked set, ``enable_events`` turns on
the task events of its dispatcher, and ``inspect active`` lists the requests it handed to the
pool. The listener runs dispatch does itself (tasks/dispatch/inline.py) and the messages it
takes (tasks/broker/taking.py) happen in a pool process, where none of that is seen. So:

- **The main process's view** (:class:`View`): whether task events are on, which tasks have a
  rate limit, and the ids revoked. A consumer step (:class:`ShareWorkerView`) writes it every
  :data:`REFRESH` seconds, when it changed, to memory shared with the pool processes (mapped
  before they fork); a pool process reads it again only when its generation moved.
- **What each pool process runs** in dispatch: the request of the listener it runs, in a slot of
  its own (the pool process's index), which the dispatch task's request reads for
  ``inspect active`` (:class:`DispatchRequest`).

Relied on, checked on Celery 5.7.0 (:func:`tasks.broker.internals_checked`): the consumer's
``event_dispatcher`` (``enabled``, and ``groups``: empty, for every group, or a set that holds
``"task"`` when task events are on), ``celery.worker.state.revoked`` (the ids revoked), the
dispatch task's ``Request`` (its ``info()``, its ``worker_pid``), and the pool processes' index
(``billiard.process.current_process().index``).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from billiard.process import current_process
from celery import bootsteps
from celery.worker import state as worker_state
from celery.worker.request import Request

__all__ = ["REFRESH", "DispatchRequest", "ShareWorkerView", "View", "WorkerView", "shared"]

logger = logging.getLogger("notifier")

#: How often the main process writes its view, at most: a ``rate_limit`` or ``revoke`` reaches
#: the fast paths within this.
REFRESH = 0.05
_VIEW_BYTES = 1 << 16
_SLOTS = 64
_SLOT_BYTES = 1024
_HEADER = struct.Struct("<QI")  # generation (odd while written), length of the JSON


@dataclass(frozen=True, slots=True)
class View:
    """The main process's view, as the pool processes read it."""

    #: Whether the worker sends task events (``-E``, ``enable_events``).
    events: bool = False
    #: The names of the tasks with a rate limit.
    rate_limited: frozenset[str] = frozenset()
    #: The ids revoked.
    revoked: frozenset[str] = frozenset()


class WorkerView:
    """The memory a worker's processes share (see the module's doc)."""

    def __init__(self) -> None:
        # Anonymous and shared: the pool processes forked from the main process see its writes.
        self._memory = mmap.mmap(-1, _VIEW_BYTES + _SLOTS * _SLOT_BYTES)
        self._generation = 0
        self._written = View()
        self._read_generation = -1
        self._view = View()

    def write(self, view: View) -> None:
        """Publish ``view`` (in the main process), when it changed."""
        if view == self._written:
            return
        self._written = view
        revoked = sorted(view.revoked)
        encoded = _encode(view, revoked)
        if len(encoded) > _VIEW_BYTES - _HEADER.size:
            logger.warning(
                "%d ids revoked: too many for the fast paths to see them all", len(revoked)
            )
            while len(encoded) > _VIEW_BYTES - _HEADER.size:
                revoked = revoked[len(revoked) // 2 :]
                encoded = _encode(view, revoked)
        memory = self._memory
        # A seqlock: odd while written, so that a reader never takes half of two views.
        _HEADER.pack_into(memory, 0, self._generation + 1, 0)
        memory[_HEADER.size : _HEADER.size + len(encoded)] = encoded
        self._generation += 2
        _HEADER.pack_into(memory, 0, self._generation, len(encoded))

    def view(self) -> View:
        """The main process's latest view (in a pool process)."""
        memory = self._memory
        generation, length = _HEADER.unpack_from(memory, 0)
        if generation == self._read_generation:
            return self._view
        for _ in range(100):
            generation, length = _HEADER.unpack_from(memory, 0)
            encoded = memory[_HEADER.size : _HEADER.size + length]
            if generation % 2 == 0 and _HEADER.unpack_from(memory, 0)[0] == generation:
                break
        else:
            return self._view
        if not encoded:
            view = View()
        else:
            data = json.loads(encoded)
            view = View(
                bool(data["events"]), frozenset(data["rate_limited"]), frozenset(data["revoked"])
            )
        self._view, self._read_generation = view, generation
        return view

    @contextmanager
    def running(self, info: dict[str, Any]) -> Iterator[None]:
        """Say, while the block runs, that this pool process runs the task of ``info`` (a
        request's ``info()``) in dispatch."""
        index = getattr(current_process(), "index", None)
        if index is None or index >= _SLOTS:
            yield
            return
        encoded = json.dumps({"pid": os.getpid(), "info": info}, default=str).encode()
        if len(encoded) > _SLOT_BYTES - 4:
            info = {key: info[key] for key in ("id", "name", "time_start") if key in info}
            encoded = json.dumps({"pid": os.getpid(), "info": info}, default=str).encode()
        offset = _VIEW_BYTES + index * _SLOT_BYTES
        memory = self._memory
        struct.pack_into("<I", memory, offset, 0)
        memory[offset + 4 : offset + 4 + len(encoded)] = encoded
        struct.pack_into("<I", memory, offset, len(encoded))
        try:
            yield
        finally:
            struct.pack_into("<I", memory, offset, 0)

    def run_of(self, pid: int | str | None) -> dict[str, Any] | None:
        """The request info of what pool process ``pid`` runs in dispatch, if anything."""
        if pid is None:
            return None
        memory = self._memory
        for index in range(_SLOTS):
            offset = _VIEW_BYTES + index * _SLOT_BYTES
            (length,) = struct.unpack_from("<I", memory, offset)
            if not length or length > _SLOT_BYTES - 4:
                continue
            try:
                slot = json.loads(memory[offset + 4 : offset + 4 + length])
            except ValueError:  # written as it was read
                continue
            if slot.get("pid") == int(pid):
                info: dict[str, Any] = slot["info"]
                return info
        return None


def _encode(view: View, revoked: list[str]) -> bytes:
    return json.dumps(
        {"events": view.events, "rate_limited": sorted(view.rate_limited), "revoked": revoked}
    ).encode()


#: The worker's: mapped when the worker imports its app, before its pool processes fork.
shared = WorkerView()


def main_view(consumer: Any) -> View:
    """What ``consumer`` (the worker's main process's) knows that the fast paths must."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    events = bool(
        dispatcher is not None
        and dispatcher.enabled
        and (not dispatcher.groups or "task" in dispatcher.groups)
    )
    rate_limited = frozenset(
        name for name, task in consumer.app.tasks.items() if getattr(task, "rate_limit", None)
    )
    return View(events, rate_limited, frozenset(worker_state.revoked))


class ShareWorkerView(bootsteps.StartStopStep):
    """A consumer step: write the main process's view for the pool processes."""

    requires = ("celery.worker.consumer.events:Events", "celery.worker.consumer.tasks:Tasks")

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.timer: Any = None

    def start(self, consumer: Any) -> None:
        self.refresh(consumer)
        self.timer = consumer.timer.call_repeatedly(REFRESH, self.refresh, (consumer,))

    def stop(self, consumer: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    shutdown = stop

    @staticmethod
    def refresh(consumer: Any) -> None:
        shared.write(main_view(consumer))


class DispatchRequest(Request):
    """The dispatch task's request in the worker's main process: while its pool process runs a
    listener in dispatch, ``inspect active`` (and Flower's worker page) shows that listener's
    task, its id ``<event_id>:<listener>``, with the dispatch task's id as ``parent_id``."""

    def info(self, safe: bool = False) -> Any:
        run = shared.run_of(self.worker_pid)
        return super().info(safe) if run is None else run
