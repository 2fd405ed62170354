"""``@listener``: declare a worker-side listener of resource change events.

A listener is a plain function taking an :class:`~tasks.listeners.event.Event`, or an existing
Celery task whose function takes one. Each listener runs as its own Celery task, so it retries and
fails on its own.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast, overload

from celery import Celery, Task, current_task

from notifier.errors import ListenerError, ObjectsBusy
from notifier.events import ACTIONS
from notifier.wire.message import Message, decode
from tasks.listeners.batch import batch_runner, check_batch
from tasks.listeners.event import Event
from tasks.listeners.ordered import OrderGuard

__all__ = ["DEFAULT_ACTIONS", "LISTENER_QUEUE", "RETRIES", "Listener", "Registry", "wants"]

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("notifier")

DEFAULT_ACTIONS = ("create", "update", "delete")
#: The queue of a listener that names none: its own, so that only the workers that have the
#: listener take its tasks.
LISTENER_QUEUE = "notifier.listener.{name}"
_ACTION_NAMES = tuple(action.value for action in ACTIONS)
_RESOURCE_NAME = re.compile(r"^(\*|[A-Za-z0-9_]+)$")

#: How a plain-function listener retries unless it says otherwise: after any exception, or
#: after its pool process died, up to 3 more times, about 1, 2 and 4 s later (exponential
#: backoff, at most 60 s, with full jitter). Then its message goes to the dead letters.
RETRIES: dict[str, Any] = {
    "autoretry_for": (Exception,),
    "max_retries": 3,
    "default_retry_delay": 1,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
}

#: The Celery task options a plain-function listener may set (see Celery's Task attributes).
TASK_OPTIONS = frozenset(
    {
        "max_retries",
        "default_retry_delay",
        "autoretry_for",
        "dont_autoretry_for",
        "retry_kwargs",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "rate_limit",
        "time_limit",
        "soft_time_limit",
        "acks_late",
        "reject_on_worker_lost",
        "priority",
    }
)


@dataclass(frozen=True, slots=True)
class Listener:
    """A registered listener: which events it wants, and the Celery task that runs it."""

    name: str
    resource_names: frozenset[str]  # {"*"}: every resource
    actions: frozenset[str]
    task: Task[Any, Any]
    queue: str
    where: Mapping[str, frozenset[str]] = field(default_factory=dict)  # payload key: values
    ordered: bool = False
    parents: frozenset[str] = frozenset()  # resources whose deletes drop what is under them
    batch: int | None = None  # a batch listener: the most events one run receives

    def wants(self, message: Message) -> bool:
        return wants(message, self.resource_names, self.actions, self.where, self.parents)

    def is_parent_delete(self, message: Message) -> bool:
        """Whether ``message`` deletes a parent of this listener's resources."""
        return message.action == "delete" and message.resource_name in self.parents


def wants(
    message: Message,
    resource_names: Collection[str],
    actions: Collection[str],
    where: Mapping[str, Collection[str]],
    parents: Collection[str],
) -> bool:
    """Whether a listener of these ``resource_names``, ``actions``, ``where`` and ``parents``
    (as ``@listener`` checked them) wants ``message``: the one matching rule, for the listeners
    of this worker and for those other workers announce (tasks/fleet.py)."""
    if message.action == "delete" and message.resource_name in parents:
        # A bucket's delete has no collection_id, yet drops the collections a
        # where={"collection_id": ...} listener keeps: only the values it has must match.
        return all(
            message.payload.get(key) is None or message.payload.get(key) in values
            for key, values in where.items()
        )
    return (
        message.action in actions
        and ("*" in resource_names or message.resource_name in resource_names)
        and all(
            isinstance(value := message.payload.get(key), str) and value in values
            for key, values in where.items()
        )
    )


def _as_event(argument: Event | Mapping[str, Any]) -> Event:
    # A listener task receives the message (a dict); a direct call may pass an Event.
    if isinstance(argument, Event):
        return argument
    return Event.from_message(decode(argument))


class Registry:
    """The listeners of one Celery app, by name."""

    def __init__(
        self,
        app: Celery,
        on_new_queue: Callable[[str], None] = lambda name: None,
        may_run: Callable[[Any, Any], bool] = lambda task, message: True,
        order_guard: Callable[[], OrderGuard] | None = None,
        on_defer: Callable[[Any], Mapping[str, Any] | None] = lambda task: None,
    ) -> None:
        self.app = app
        self.on_new_queue = on_new_queue
        # Asked before each run of a listener task (the running task, its message): False
        # skips the run, the guard having dealt with the message.
        self.may_run = may_run
        # Gives the per-object versions of ordered listeners (tasks.listeners.ordered).
        self.order_guard = order_guard
        # Asked for each run sent back to its queue because its objects were busy (a delivery
        # that is not an attempt): the message headers the task sent back carries, if any.
        self.on_defer = on_defer
        self._listeners: dict[str, Listener] = {}

    def __iter__(self) -> Iterator[Listener]:
        return iter(self._listeners.values())

    def __len__(self) -> int:
        return len(self._listeners)

    def __getitem__(self, name: str) -> Listener:
        return self._listeners[name]

    def matching(self, message: Message, only: Collection[str] | None = None) -> list[Listener]:
        """The listeners that want ``message`` (of those named in ``only``, when given), in the
        order they were registered."""
        return [
            listener
            for listener in self._listeners.values()
            if (only is None or listener.name in only) and listener.wants(message)
        ]

    @overload
    def listener(self, function: F, /) -> F: ...

    @overload
    def listener(
        self,
        resource_names: str | Iterable[str] = "*",
        /,
        *,
        actions: Iterable[str] = DEFAULT_ACTIONS,
        name: str | None = None,
        queue: str | None = None,
        where: Mapping[str, str | Iterable[str]] | None = None,
        ordered: bool = False,
        parents: Iterable[str] = (),
        batch: int | None = None,
        **task_options: Any,
    ) -> Callable[[F], F]: ...

    def listener(
        self,
        resource_names: Any = "*",
        /,
        *,
        actions: Iterable[str] = DEFAULT_ACTIONS,
        name: str | None = None,
        queue: str | None = None,
        where: Mapping[str, str | Iterable[str]] | None = None,
        ordered: bool = False,
        parents: Iterable[str] = (),
        batch: int | None = None,
        **task_options: Any,
    ) -> Any:
        """Register a listener of the events on ``resource_names`` (``"*"``: all) and
        ``actions`` (default create, update, delete; ``read`` only when named).

        Used bare (``@listener``) or with arguments. ``where`` keeps only the events whose
        payload has these values, e.g. ``where={"bucket_id": "blog"}`` or
        ``where={"collection_id": ["posts", "pages"]}``. ``queue`` is the queue of the
        listener's tasks (default: ``notifier.listener.<name>``, one per listener).

        ``ordered=True`` never lets the listener apply an older version of an object after a
        newer one (see :mod:`tasks.listeners.ordered`): it receives each event with only the changes
        newer than those it applied. ``parents`` names resources whose deletes the listener
        receives too, as "drop everything under it" (e.g. ``parents=("bucket", "collection")``
        for Kinto records): :meth:`~tasks.listeners.event.Event.parent_deletes` says what to drop.
        ``batch=100`` makes a batch listener: it receives a list of at most 100 events per run
        (see :mod:`tasks.listeners.batch`).

        On a plain function, ``task_options`` are Celery task options (``max_retries``,
        ``rate_limit``...).
        Stacked on an existing ``@app.task``, the task keeps its own options. The decorated
        object is returned unchanged, still callable with an :class:`~tasks.listeners.event.Event`.
        """
        if callable(resource_names) and not isinstance(resource_names, str):
            return self.listener()(resource_names)
        resources = self._check_resources(resource_names)
        wanted = self._check_actions(actions)
        payload_filter = self._check_where(where or {})
        parent_names = self._check_parents(parents, resources)
        if not isinstance(ordered, bool):
            raise ListenerError(f"bad ordered={ordered!r}: use True or False")
        batch_size = check_batch(batch, ordered=ordered, parents=parent_names)
        unknown = sorted(set(task_options) - TASK_OPTIONS)
        if unknown:
            raise ListenerError(
                f"unknown listener options {unknown}: @listener takes actions, name, queue and "
                f"the Celery task options {sorted(TASK_OPTIONS)}"
            )

        def register(function: F) -> F:
            if isinstance(function, Task):
                listener_name = name or function.name
            else:
                listener_name = name or f"{function.__module__}.{function.__qualname__}"
            if listener_name in self._listeners:
                raise ListenerError(
                    f"a listener named {listener_name!r} is already registered: give this one "
                    f"another name with @listener(..., name='...')"
                )
            if batch_size is not None:
                task = self._make_task(
                    listener_name, batch_runner(self, function, listener_name), task_options
                )
            elif isinstance(function, Task):
                task = self._adopt_task(function, listener_name, task_options)
            else:

                @functools.wraps(function)
                def run(message: Event | Mapping[str, Any]) -> Any:
                    return self._run(listener_name, message, function)

                task = self._make_task(listener_name, run, task_options)
            listener_queue = (
                queue or getattr(task, "queue", None) or LISTENER_QUEUE.format(name=listener_name)
            )
            self._listeners[listener_name] = Listener(
                listener_name,
                resources,
                wanted,
                task,
                listener_queue,
                payload_filter,
                ordered,
                parent_names,
                batch_size,
            )
            self.on_new_queue(listener_queue)
            return function

        return register

    def _make_task(
        self, task_name: str, run: Callable[..., Any], options: dict[str, Any]
    ) -> Task[Any, Any]:
        # The Celery task of a plain-function listener, ``run`` its body.
        if task_name in self.app.tasks:
            raise ListenerError(
                f"a Celery task named {task_name!r} exists already: give the listener another "
                f"name with @listener(..., name='...')"
            )
        # Typed by hand: celery-types cannot tell which overload of app.task **options picks.
        task_decorator = cast(
            Callable[..., Callable[[Callable[..., Any]], Task[Any, Any]]], self.app.task
        )
        # Not shared: the task belongs to this registry's app, not to every app in the process.
        return task_decorator(name=task_name, shared=False, **{**RETRIES, **options})(run)

    def _adopt_task(
        self, task: Task[Any, Any], listener_name: str, options: dict[str, Any]
    ) -> Task[Any, Any]:
        if options:
            raise ListenerError(
                f"{task.name} is a Celery task: set {sorted(options)} on its @app.task(...) "
                "instead of on @listener"
            )
        # The task's own run (and whatever Celery wrapped around it, like autoretry) receives
        # an Event; what arrives from the queue is the message.
        original_run = task.run

        def run(message: Event | Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
            return self._run(
                listener_name, message, lambda event: original_run(event, *args, **kwargs)
            )

        task.run = run  # type: ignore[method-assign]
        return task

    def _run(self, name: str, message: Any, call: Callable[[Event], Any]) -> Any:
        # One run of a listener's task (or a direct call, outside any worker).
        task = current_task
        if not self.may_run(task, message):
            return None
        event = _as_event(message)
        listener = self._listeners.get(name)
        if listener is None or not listener.ordered:
            return call(event)
        if self.order_guard is None:
            raise ListenerError(f"{name} is ordered, and its registry has no order guard")
        request = getattr(task, "request", None)
        guard = self.order_guard()
        try:
            claim = guard.claim(name, event, parents=listener.parents)
        except ObjectsBusy:
            if request is None or not getattr(request, "id", None):
                raise  # a direct call: the caller decides
            self._defer(task, listener)
            return None
        new_event = claim.new_event
        if new_event is None:
            guard.release(claim, applied=False)
            logger.info("%s: event %s skipped: no change newer than applied", name, event.event_id)
            return None
        try:
            with guard.holding(claim):
                result = call(new_event)
        except BaseException:
            guard.release(claim, applied=False)
            raise
        guard.release(claim, applied=True)
        return result

    def _defer(self, task: Any, listener: Listener) -> None:
        # Back to the listener's queue, a little later, as the same task (same id, same
        # attempts): waiting here would keep a pool process that the run holding the objects
        # may need, when that run is a redelivery.
        request = task.request
        delay = random.uniform(0.5, 2.0)
        headers = self.on_defer(task)
        task.apply_async(
            args=request.args,
            kwargs=request.kwargs,
            task_id=request.id,
            queue=listener.queue,
            countdown=delay,
            retries=request.retries,
            **({"headers": headers} if headers else {}),
        )
        logger.info(
            "%s: task %s sent back to %s for %.1f s, its objects being busy",
            listener.name,
            request.id,
            listener.queue,
            delay,
        )

    @staticmethod
    def _check_resources(resource_names: str | Iterable[str]) -> frozenset[str]:
        names = [resource_names] if isinstance(resource_names, str) else list(resource_names)
        bad = [n for n in names if not isinstance(n, str) or not _RESOURCE_NAME.match(n)]
        if not names or bad:
            raise ListenerError(
                f"bad resource names {bad or names!r}: use resource names like 'article', "
                "or '*' for every resource"
            )
        return frozenset(names)

    @staticmethod
    def _check_parents(parents: Any, resources: frozenset[str]) -> frozenset[str]:
        names = [parents] if isinstance(parents, str) else list(parents)
        bad = [
            n
            for n in names
            if not isinstance(n, str) or not _RESOURCE_NAME.match(n) or n == "*" or n in resources
        ]
        if bad:
            raise ListenerError(
                f"bad parents {bad!r}: name the resources whose deletes drop this listener's "
                "records, e.g. parents=('bucket', 'collection'), other than its own resources"
            )
        if names and "*" in resources:
            raise ListenerError(
                f"parents={names!r} with every resource ('*'): name the listener's resources, "
                "so that a parent's delete is not also one of its own objects' deletes"
            )
        return frozenset(names)

    @staticmethod
    def _check_where(where: Any) -> dict[str, frozenset[str]]:
        how = (
            "use payload keys and the values they must have, e.g. where={'bucket_id': 'blog'} "
            "or where={'collection_id': ['posts', 'pages']}"
        )
        if not isinstance(where, Mapping):
            raise ListenerError(f"bad where={where!r}: {how}")
        checked = {}
        for key, values in where.items():
            if isinstance(values, str):
                allowed = [values]
            elif isinstance(values, Iterable) and not isinstance(values, Mapping):
                allowed = list(values)
            else:
                allowed = []
            if (
                not isinstance(key, str)
                or not allowed
                or not all(isinstance(value, str) for value in allowed)
            ):
                raise ListenerError(f"bad where= entry {key!r}: {values!r}: {how}")
            checked[key] = frozenset(allowed)
        return checked

    @staticmethod
    def _check_actions(actions: Iterable[str]) -> frozenset[str]:
        if isinstance(actions, str):
            actions = [actions]
        names = list(actions)
        unknown = [a for a in names if a not in _ACTION_NAMES]
        if unknown or not names:
            raise ListenerError(
                f"unknown actions {unknown or names!r}: use some of {', '.join(_ACTION_NAMES)}"
            )
        return frozenset(names)
