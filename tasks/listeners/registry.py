"""``@listener``: declare a worker-side listener of resource change events.

A listener is a plain function taking an :class:`~tasks.listeners.event.Event`, or an existing
Celery task whose function takes one. Each listener runs as its own Celery task, so it retries and
fails on its own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast, overload

from celery import Celery, Task, current_task

from notifier.errors import ListenerError
from notifier.wire.message import Message
from tasks.listeners.batch import batch_runner, check_batch
from tasks.listeners.event import Event
from tasks.listeners.listener import Listener, wants
from tasks.listeners.options import (
    check_actions,
    check_parents,
    check_resources,
    check_task_options,
    check_where,
)
from tasks.listeners.runs import ListenerRun, NotWired, RunWrapper, run_through

__all__ = ["DEFAULT_ACTIONS", "LISTENER_QUEUE", "RETRIES", "Listener", "Registry", "wants"]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ACTIONS = ("create", "update", "delete")
#: The queue of a listener that names none: its own, so that only the workers that have the
#: listener take its tasks.
LISTENER_QUEUE = "notifier.listener.{name}"

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


class Registry:
    """The listeners of one Celery app, by name."""

    def __init__(
        self,
        app: Celery,
        on_new_queue: Callable[[str], None] = lambda name: None,
        wrappers: Sequence[RunWrapper] | None = None,
    ) -> None:
        self.app = app
        self.on_new_queue = on_new_queue
        self._wrappers = None if wrappers is None else tuple(wrappers)
        self._listeners: dict[str, Listener] = {}
        self._by_resource: dict[str, list[Listener]] = {}
        self._by_task: dict[str, list[Listener]] = {}

    def wrap_runs(self, wrappers: Sequence[RunWrapper]) -> None:
        """Run every listener task through ``wrappers``, outermost first
        (:mod:`tasks.listeners.runs`); :func:`tasks.wiring.wire` gives the worker's."""
        self._wrappers = tuple(wrappers)

    @property
    def wrappers(self) -> tuple[RunWrapper, ...] | None:
        """The run wrappers of this registry's listener tasks; None until it is given some."""
        return self._wrappers

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
            for listener in self._of_resource(message.resource_name)
            if (only is None or listener.name in only) and listener.wants(message)
        ]

    def of_task(self, task_name: str | None) -> list[Listener]:
        """The listeners whose Celery task is named ``task_name`` (none for any other task), in
        the order they were registered: what Celery's signals about a task run name."""
        if task_name is None:
            return []
        found = self._by_task.get(task_name)
        if found is None:
            found = [
                listener for listener in self._listeners.values() if listener.task.name == task_name
            ]
            self._by_task[task_name] = found
        return found

    def _of_resource(self, resource_name: str) -> list[Listener]:
        # The listeners that may want a message on ``resource_name``, in the order they were
        # registered: dispatch asks for each message, and most listeners are of other resources.
        found = self._by_resource.get(resource_name)
        if found is None:
            found = self._by_resource[resource_name] = [
                listener
                for listener in self._listeners.values()
                if resource_name in listener.resource_names
                or "*" in listener.resource_names
                or resource_name in listener.parents
            ]
        return found

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
        resources = check_resources(resource_names)
        wanted = check_actions(actions)
        payload_filter = check_where(where or {})
        parent_names = check_parents(parents, resources)
        if not isinstance(ordered, bool):
            raise ListenerError(f"bad ordered={ordered!r}: use True or False")
        batch_size = check_batch(batch, ordered=ordered, parents=parent_names)
        check_task_options(task_options)

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
            self._by_resource.clear()
            self._by_task.clear()
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
        # One run of a plain listener's task (or a direct call, outside any worker).
        def last(run: ListenerRun) -> Any:
            event = run.decoded()
            if run.listener.ordered and not run.guarded:
                raise ListenerError(
                    f"{name} is ordered, and its registry has no order guard: a worker's gets "
                    "one from tasks.wiring.wire"
                )
            return call(event)

        return self.run(name, current_task, message, last)

    def run(self, name: str, task: Any, message: Any, last: Callable[[ListenerRun], Any]) -> Any:
        """Run listener ``name``'s ``task`` (the running one, Celery's current task) on
        ``message`` (what it received) through the run wrappers, then ``last``. In a worker, a
        registry not given its wrappers yet raises :class:`~tasks.listeners.runs.NotWired`; a
        direct call runs bare."""
        wrappers = self._wrappers
        if wrappers is None:
            if getattr(getattr(task, "request", None), "id", None):
                raise NotWired(
                    f"listener {name} runs in a worker whose registry has no run wrappers: "
                    "tasks.wiring.wire(app, registry) gives them when the worker starts"
                )
            wrappers = ()
        return run_through(wrappers, ListenerRun(self._listeners[name], task, message), last)
