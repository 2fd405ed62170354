"""The worker's collaborators, built once when it starts, and passed to what needs them.

:func:`wire` is the one entry point: ``tasks.startup`` calls it when a worker starts, once its
settings are checked (:func:`tasks.settings.configured`: the dead letters' and the order
guard's Redis URLs, the visibility timeout), before the pool forks. It builds:

- the dead letters (:class:`~tasks.dead_letters.DeadLetters`), where dispatch, the bound on
  deliveries and the consumer put what cannot be handled;
- the order guard of ordered listeners (:class:`~tasks.listeners.ordered.OrderGuard`), whose
  claims last a visibility timeout: a dead worker's lapse about when its messages are handed out
  again;
- the broker's taker (:func:`tasks.broker.taking.taker_of`; None where it cannot take as kombu
  does), with which dispatch takes more messages;
- the coverage (:class:`~tasks.dispatch.coverage.Coverage`) of the listeners other workers know;
- the pace of the listeners (:class:`~tasks.dispatch.pace.Pace`), which says which ones are
  fast enough to run in dispatch;
- the metrics (:class:`~tasks.metrics.WorkerMetrics`), when the worker serves them
  (``NOTIFIER_METRICS_PORT``): in prometheus-client's multiprocess directory, set now, before
  the pool forks;
- the run wrappers of the registry (:mod:`tasks.listeners.runs`): the pace, which times each
  run, the bound on deliveries (:class:`~tasks.dispatch.bound.DeliveryBound`), then the order
  of ordered listeners (:class:`~tasks.listeners.ordered_runs.OrderedRuns`).

Where they are found: on the app, as :mod:`tasks.settings` keeps the settings it checked
(``app.notifier_collaborators``). The dispatch task reads its own app's (:func:`wired`), and the
Celery signal handlers their sender's (:mod:`tasks.dispatch.signals`); the registry is given its
run wrappers. Nothing is built at import, and nothing is cached beside the app: a dispatch or a
listener run in a worker before :func:`wire` raises :class:`~tasks.listeners.runs.NotWired`,
which names it. A test builds the same collaborators around fakes with :func:`collaborators`
and :func:`bind`, and its registry then runs listeners as the worker's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery

from tasks.broker.taking import Taker, taker_of
from tasks.dead_letters import DeadLetters
from tasks.dispatch.bound import DeliveryBound
from tasks.dispatch.coverage import Coverage
from tasks.dispatch.inline import Inline
from tasks.dispatch.pace import INLINE_BUDGET, Pace
from tasks.fleet import Fleet
from tasks.listeners.ordered import OrderGuard
from tasks.listeners.ordered_runs import OrderedRuns
from tasks.listeners.registry import Registry
from tasks.listeners.runs import NotWired, RunWrapper
from tasks.metrics import WorkerMetrics, use_multiprocess_dir
from tasks.settings import configured

__all__ = [
    "Collaborators",
    "NotWired",
    "bind",
    "collaborators",
    "wire",
    "wired",
    "wired_or_none",
]

_ATTRIBUTE = "notifier_collaborators"


@dataclass(frozen=True, slots=True)
class Collaborators:
    """What a worker's dispatch and listener runs work with, built once at its start."""

    registry: Registry
    dead_letters: DeadLetters
    order_guard: OrderGuard
    taker: Taker | None
    coverage: Coverage
    bound: DeliveryBound
    #: Which listeners dispatch runs itself, by their pace.
    inline: Inline
    #: The registry's run wrappers, outermost first.
    wrappers: tuple[RunWrapper, ...]
    #: How long a dispatch run waits for the next message once its queue is empty.
    linger: float = 0.0
    #: What the worker counts (None: it serves no metrics).
    metrics: WorkerMetrics | None = None

    @property
    def pace(self) -> Pace:
        """The listeners' run times in this process (a run wrapper feeds them)."""
        return self.inline.pace


def wire(app: Celery, registry: Registry) -> Collaborators:
    """Build the collaborators of ``app``'s worker, whose listeners are ``registry``'s, from its
    checked settings, and bind them (see the module's doc); once per app."""
    done = wired_or_none(app)
    if done is not None:
        return done
    settings = configured(app)
    dead_letters = DeadLetters.from_url(settings.dead_letters_url)
    # A dead worker's claims lapse about when its messages are handed out again.
    order_guard = OrderGuard.from_url(settings.order_url, lease=settings.visibility_timeout)
    metrics = None
    if settings.metrics_port is not None:
        use_multiprocess_dir()  # before any value is counted, and before the pool forks
        metrics = WorkerMetrics()
    built = collaborators(
        registry,
        dead_letters,
        order_guard,
        taker_of(app),
        only_dispatches=settings.dispatch_only,
        inline_budget=settings.inline_budget,
        linger=settings.linger,
        metrics=metrics,
    )
    bind(app, built)
    return built


def collaborators(
    registry: Registry,
    dead_letters: DeadLetters,
    order_guard: OrderGuard,
    taker: Taker | None = None,
    *,
    fleet: Fleet | None = None,
    only_dispatches: bool = False,
    inline_budget: float = INLINE_BUDGET,
    linger: float = 0.0,
    metrics: WorkerMetrics | None = None,
) -> Collaborators:
    """The collaborators of a worker of ``registry``, around these stores: what :func:`wire`
    builds from the settings. ``inline_budget``: the pace's budget; ``linger``: the dispatch
    runs'. ``fleet``: the live workers' records (default: beside the dead letters, where
    workers announce them). ``metrics``: what the worker counts, if anything."""
    bound = DeliveryBound(registry, dead_letters)
    coverage = Coverage(
        fleet or Fleet(dead_letters.client),
        registry,
        dead_letters,
        only_dispatches=only_dispatches,
    )
    pace = Pace(inline_budget)
    wrappers = (pace, bound, OrderedRuns(order_guard, on_defer=bound.forget))
    return Collaborators(
        registry,
        dead_letters,
        order_guard,
        taker,
        coverage,
        bound,
        Inline(pace),
        wrappers,
        linger,
        metrics,
    )


def bind(app: Celery, built: Collaborators) -> None:
    """Have ``app``'s dispatch and signal handlers work with ``built``, and its registry run its
    listeners through their run wrappers."""
    built.registry.wrap_runs(built.wrappers)
    setattr(app, _ATTRIBUTE, built)


def wired(app: Celery) -> Collaborators:
    """The collaborators :func:`wire` (or :func:`bind`) gave ``app``; :class:`NotWired` if none
    did."""
    built = wired_or_none(app)
    if built is None:
        name = getattr(app, "main", None)
        raise NotWired(
            f"the collaborators of app {name!r} are not built: tasks.wiring.wire(app, registry) "
            "builds them when a worker starts (tasks.startup), before any dispatch runs"
        )
    return built


def wired_or_none(app: Any) -> Collaborators | None:
    """The collaborators bound to ``app``, if any (``app``: any object, or None)."""
    built = getattr(app, _ATTRIBUTE, None)
    return built if isinstance(built, Collaborators) else None
