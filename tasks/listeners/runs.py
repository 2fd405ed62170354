"""The run of a listener's task, and the run wrappers a registry runs it through.

A :class:`~tasks.listeners.registry.Registry` runs each listener task through the list of run
wrappers it is given, outermost first, in the spirit of dramatiq's middleware: each wrapper
receives the run and ``proceed``, and calls ``proceed`` (with the run, or a run it changed) to go
on, or returns without calling it to skip the listener. The worker's wrappers are built once, at
its start, by :func:`tasks.wiring.wire`: the pace, which times each run
(:class:`tasks.dispatch.pace.Pace`), the bound on deliveries
(:class:`tasks.dispatch.bound.DeliveryBound`), then the order of ordered listeners
(:class:`tasks.listeners.ordered_runs.OrderedRuns`). A registry built in a test with the same
wrappers runs its listeners as the worker's does; one given none runs them bare.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from notifier.errors import NotifierError
from notifier.wire.message import decode
from tasks.listeners.event import Event

if TYPE_CHECKING:
    from tasks.listeners.registry import Listener

__all__ = ["ListenerRun", "NotWired", "RunWrapper", "as_event", "run_through"]


class NotWired(NotifierError, RuntimeError):
    """Raised when a worker runs dispatch or a listener's task before
    :func:`tasks.wiring.wire` built the collaborators of its app."""


def as_event(argument: Event | Mapping[str, Any]) -> Event:
    """The event of what a listener's task received: a message (a dict), or the Event of a
    direct call."""
    if isinstance(argument, Event):
        return argument
    return Event.from_message(decode(argument))


@dataclass(frozen=True, slots=True)
class ListenerRun:
    """One run of a listener's task (or a direct call of it, outside any worker)."""

    listener: Listener
    #: The running task (Celery's ``current_task``): its ``request`` says whether a worker runs
    #: it (an id), its attempts and its delivery.
    task: Any
    #: What the task received: a message, an Event (a direct call), or a batch's messages.
    message: Any
    #: The event the listener receives, when a wrapper changed it (the order guard keeps only
    #: the changes newer than those applied); else the message's.
    event: Event | None = None
    #: Whether the order guard claimed the event's objects for this run.
    guarded: bool = False

    @property
    def request(self) -> Any:
        return getattr(self.task, "request", None)

    def decoded(self) -> Event:
        """The event this run gives its listener."""
        return self.event if self.event is not None else as_event(self.message)


class RunWrapper(Protocol):
    """Runs ``run`` by calling ``proceed`` (or not: the listener is skipped), and returns what
    the run returns."""

    def __call__(self, run: ListenerRun, proceed: Callable[[ListenerRun], Any]) -> Any: ...


def run_through(
    wrappers: Sequence[RunWrapper], run: ListenerRun, last: Callable[[ListenerRun], Any]
) -> Any:
    """Run ``run`` through ``wrappers``, outermost first, and then ``last``."""

    def step(index: int, current: ListenerRun) -> Any:
        if index == len(wrappers):
            return last(current)
        return wrappers[index](current, lambda changed: step(index + 1, changed))

    return step(0, run)
