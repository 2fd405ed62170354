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

import ctypes
import json
import logging
import mmap
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from billiard.process import current_process
from celery import bootsteps, signals
from celery.utils.time import rate
from celery.worker import state as worker_state
from celery.worker.request import Request

__all__ = [
    "MAX_REVOKED",
    "REFRESH",
    "DispatchRequest",
    "Revoked",
    "ShareWorkerView",
    "View",
    "WorkerView",
    "main_view",
    "shared",
]

logger = logging.getLogger("notifier")

#: How often the main process writes its view, at most: a ``rate_limit`` or ``revoke`` reaches
#: the fast paths within this.
REFRESH = 0.05
_VIEW_BYTES = 1 << 17  # MAX_REVOKED ids of 100 bytes, the rate-limited tasks' names
_SLOTS = 64
_SLOT_BYTES = 1024


class _Header(ctypes.Structure):
    """The view's header: its generation (odd while written), the length of its JSON and the
    JSON's CRC-32. Each field is one aligned store and load (struct's pack_into zeroes its bytes
    before it writes them, which a reader may see)."""

    _fields_ = [
        ("generation", ctypes.c_uint64),
        ("length", ctypes.c_uint32),
        ("checksum", ctypes.c_uint32),
    ]


_HEADER_BYTES = ctypes.sizeof(_Header)


#: The most revoked ids the fast paths see: the newest.
MAX_REVOKED = 1000
#: How many refreshes the main process reads its revoked ids again after, even when their
#: count did not change (reading them all sorts them: 10 ms for Celery's 50,000 at most).
_REVOKED_REREAD = 20


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
        self._header = _Header.from_buffer(self._memory)
        self._slots = [
            ctypes.c_uint32.from_buffer(self._memory, _VIEW_BYTES + index * _SLOT_BYTES)
            for index in range(_SLOTS)
        ]
        self._generation = 0
        self._written = View()
        self._read_generation = -1
        self._view = View()

    def write(self, view: View) -> None:
        """Publish ``view`` (in the main process), when it changed."""
        if view == self._written:
            return
        self._written = view
        encoded = _encode(view)
        if len(encoded) > _VIEW_BYTES - _HEADER_BYTES:
            logger.warning("the worker's view is too large to share: the revoked ids are left out")
            encoded = _encode(View(view.events, view.rate_limited))
        memory = self._memory
        # A seqlock: odd while written; the length and a checksum of the body beside it, so
        # that a reader never takes half of two views, whatever order the stores land in.
        header = self._header
        header.generation = self._generation + 1
        memory[_HEADER_BYTES : _HEADER_BYTES + len(encoded)] = encoded
        header.length, header.checksum = len(encoded), zlib.crc32(encoded)
        self._generation += 2
        header.generation = self._generation

    def view(self) -> View:
        """The main process's latest view (in a pool process)."""
        memory, header = self._memory, self._header
        if header.generation == self._read_generation:
            return self._view
        for _ in range(100):
            generation, length, checksum = header.generation, header.length, header.checksum
            encoded = memory[_HEADER_BYTES : _HEADER_BYTES + length]
            if (
                generation % 2 == 0
                and header.generation == generation
                and zlib.crc32(encoded) == checksum
            ):
                break
        else:
            return self._view  # being written all along: the next call looks again
        if generation == 0:
            view = View()  # nothing written yet
        else:
            data = json.loads(encoded)
            view = View(
                bool(data["events"]), frozenset(data["rate_limited"]), frozenset(data["revoked"])
            )
        self._view, self._read_generation = view, generation
        return view

    def forget_runs(self) -> None:
        """Clear this pool process's slot: what a process its index had before it, killed in
        a run, left there (in a pool process, as it starts)."""
        index = getattr(current_process(), "index", None)
        if index is not None and index < _SLOTS:
            self._slots[index].value = 0

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
        if len(encoded) > _SLOT_BYTES - 4:  # a listener name of a kilobyte: not shown
            yield
            return
        offset = _VIEW_BYTES + index * _SLOT_BYTES
        slot = self._slots[index]
        slot.value = 0
        self._memory[offset + 4 : offset + 4 + len(encoded)] = encoded
        slot.value = len(encoded)
        try:
            yield
        finally:
            slot.value = 0

    def run_of(self, pid: int | str | None) -> dict[str, Any] | None:
        """The request info of what pool process ``pid`` runs in dispatch, if anything."""
        if pid is None:
            return None
        memory = self._memory
        for index in range(_SLOTS):
            offset = _VIEW_BYTES + index * _SLOT_BYTES
            length = self._slots[index].value
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


def _encode(view: View) -> bytes:
    return json.dumps(
        {
            "events": view.events,
            "rate_limited": sorted(view.rate_limited),
            "revoked": sorted(view.revoked),
        }
    ).encode()


#: The worker's: mapped when the worker imports its app, before its pool processes fork.
shared = WorkerView()


def main_view(consumer: Any, revoked: Revoked | None = None) -> View:
    """What ``consumer`` (the worker's main process's) knows that the fast paths must;
    ``revoked``: the newest ids revoked (default: read now)."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    events = bool(
        dispatcher is not None
        and dispatcher.enabled
        and (not dispatcher.groups or "task" in dispatcher.groups)
    )
    rate_limited = frozenset(name for name, task in consumer.app.tasks.items() if _limited(task))
    return View(events, rate_limited, (revoked or Revoked()).newest(worker_state.revoked))


def _limited(task: Any) -> bool:
    # rate() of "0" and "0/s" is 0: no limit, as the worker's buckets read it.
    limit: Any = getattr(task, "rate_limit", None)
    return bool(limit and rate(limit))


class Revoked:
    """The newest :data:`MAX_REVOKED` ids of Celery's revoked set (oldest first), read again
    when their count changed, and every :data:`_REVOKED_REREAD` reads."""

    def __init__(self) -> None:
        self._count = -1
        self._reads = 0
        self._ids: frozenset[str] = frozenset()
        self._told = False

    def newest(self, revoked: Any) -> frozenset[str]:
        self._reads += 1
        if len(revoked) != self._count or self._reads >= _REVOKED_REREAD:
            self._count, self._reads = len(revoked), 0
            ids = list(revoked)
            if len(ids) > MAX_REVOKED and not self._told:
                self._told = True
                logger.warning(
                    "%d ids revoked: the fast paths see the newest %d", len(ids), MAX_REVOKED
                )
            self._ids = frozenset(ids[-MAX_REVOKED:])
        return self._ids


class ShareWorkerView(bootsteps.StartStopStep):
    """A consumer step: write the main process's view for the pool processes."""

    requires = ("celery.worker.consumer.events:Events", "celery.worker.consumer.tasks:Tasks")

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.timer: Any = None
        self.revoked = Revoked()

    def start(self, consumer: Any) -> None:
        self.refresh(consumer)
        self.timer = consumer.timer.call_repeatedly(REFRESH, self.refresh, (consumer,))

    def stop(self, consumer: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    shutdown = stop

    def refresh(self, consumer: Any) -> None:
        shared.write(main_view(consumer, self.revoked))


@signals.worker_process_init.connect
def _forget_runs_of_the_process_before(**kwargs: Any) -> None:
    shared.forget_runs()


class DispatchRequest(Request):
    """The dispatch task's request in the worker's main process: while its pool process runs a
    listener in dispatch, ``inspect active`` (and Flower's worker page) shows that listener's
    task, its id ``<event_id>:<listener>``, with the dispatch task's id as ``parent_id``."""

    def info(self, safe: bool = False) -> Any:
        run = shared.run_of(self.worker_pid)
        return super().info(safe) if run is None else run
