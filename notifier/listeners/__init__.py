"""Forwarders: the configured event listeners of Cliquet and Kinto, which forward events.

An application lists them in its settings (``event_listeners``, Kinto's name); each names a
module whose ``load_from_config(config, prefix)`` returns a forwarder, called with every
``ResourceChanged`` event::

    notifier.event_listeners = celery redis
    notifier.event_listeners.celery.use = notifier.listeners.celery
    notifier.event_listeners.celery.actions = create update delete
    notifier.event_listeners.celery.resources = article comment
    notifier.event_listeners.redis.use = notifier.listeners.redis
    notifier.event_listeners.redis.url = redis://localhost:6379/1

In Kinto, the same modules are named by ``kinto.event_listeners``. Each forwarder's options are
read under its prefix, and ``NOTIFIER_EVENT_LISTENERS_<NAME>_<OPTION>`` (in Kinto,
``KINTO_EVENT_LISTENERS_<NAME>_<OPTION>``) overrides any of them.

"Listener" on this side is only Kinto's word, in setting names and in :class:`ListenerBase`
(named after ``kinto.core.listeners.ListenerBase``); the worker's ``@listener`` functions are
what the messages reach.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from notifier.commits import after_commit, committed_records, watch_rollbacks
from notifier.errors import ConfigurationError, OutboxError
from notifier.events import AfterResourceChanged, ResourceChanged, impacted_records_of
from notifier.settings import EventFilter, Options
from notifier.wire.payload import split_names

if TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = [
    "Forwarder",
    "ListenerBase",
    "after_commit_events",
    "change_events",
    "env_prefix",
    "forwarder_name",
    "forwarder_options",
    "include_forwarders",
    "kinto_celery_forwarders",
]

logger = logging.getLogger("notifier")

#: The options every forwarder has, whatever its module.
COMMON_OPTIONS = ("use", "actions", "resources")


class ListenerBase:
    """What Kinto calls a configured event listener (``kinto.core.listeners.ListenerBase``):
    called with each ``ResourceChanged`` event it asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, event: Any) -> None:
        raise NotImplementedError


@functools.cache
def after_commit_events() -> tuple[type, ...]:
    """The event classes notified once a transaction committed: notifier's, and Kinto's
    (changes, and reads) where Kinto is installed."""
    try:
        from kinto.core import events as kinto
    except ImportError:
        return (AfterResourceChanged,)
    return (AfterResourceChanged, kinto.AfterResourceChanged, kinto.AfterResourceRead)


@functools.cache
def change_events() -> tuple[type, ...]:
    """The event classes notified inside the transaction that made the change: notifier's,
    and Kinto's (changes, and reads) where Kinto is installed."""
    try:
        from kinto.core import events as kinto
    except ImportError:
        return (ResourceChanged,)
    return (ResourceChanged, kinto.ResourceChanged, kinto.ResourceRead)


class Forwarder(ListenerBase):
    """A configured event listener whose work, forwarding the event, waits for the commit.

    Kinto and notifier call configured event listeners with ``ResourceChanged``, inside the
    transaction that made the change. A forwarder prepares its work then
    (:meth:`before_commit`, which may write in that transaction) and does it once that very
    transaction committed (:meth:`after_commit`, with the ``AfterResourceChanged`` of the
    change), whatever the host does with its own after-commit events: a rolled-back change, or
    the aborted part of a Kinto batch, reaches nothing; the part of a batch that committed in a
    later transaction does. The host's own ``AfterResourceChanged`` is ignored, so that nothing
    is done twice.
    """

    #: The name the forwarder is configured under, for the logs.
    name = ""

    def __call__(self, event: Any) -> None:
        if isinstance(event, after_commit_events()):
            return  # done from the commit of the event's own transaction, not from the host's
        records = impacted_records_of(event)
        kept = committed_records(event.request, records)
        if not kept:
            return
        committed = _committed_event(event, records, kept)
        work = self.before_commit(committed)
        after_commit(event.request, functools.partial(self._after_commit, work, committed))

    def before_commit(self, event: Any) -> Callable[[], None]:
        """Called inside the transaction with the ``AfterResourceChanged`` that will be true
        once it commits; returns what to do then. A raise fails the transaction. By default:
        :meth:`after_commit` of the event."""
        return functools.partial(self.after_commit, event)

    def after_commit(self, event: Any) -> None:
        raise NotImplementedError

    def _after_commit(self, work: Callable[[], None], event: Any) -> None:
        try:
            work()
        except Exception:
            # The commit is done: a forwarder's failure must not reach the request, nor stop
            # the other forwarders from having the event.
            logger.exception("listener %s failed after the commit on %r", self.name, event)

    def subscribe(self, config: Configurator, prefix: str, events: tuple[type, ...] = ()) -> None:
        """Name this forwarder after ``prefix``, and have it called with ``events`` (configured
        ones need none: their host calls them with ``ResourceChanged``). In Kinto, also watch
        each request's transactions for what a rollback undid."""
        self.name = forwarder_name(prefix)
        if config.get_settings().get("settings_prefix") == "kinto" and not config.registry.get(
            _WATCHING
        ):
            from pyramid.events import NewRequest

            config.registry[_WATCHING] = True
            config.add_subscriber(watch_rollbacks, NewRequest)
        for event_class in events:
            config.add_subscriber(self, event_class)


_WATCHING = "notifier.watching_rollbacks"


def _committed_event(event: Any, records: list[Any], kept: list[Any]) -> Any:
    """The after-commit event of ``event`` (notifier's or Kinto's), with the ``kept`` records."""
    if isinstance(event, ResourceChanged):
        positions = event.positions
        if len(kept) < len(records):
            survivors = {id(record) for record in kept}
            positions = [p for r, p in zip(records, positions, strict=True) if id(r) in survivors]
        return AfterResourceChanged(event.payload, kept, event.request, positions=positions)
    from kinto.core import events as kinto  # the event is Kinto's: Kinto is there

    after = kinto.AfterResourceRead if isinstance(event, kinto.ResourceRead) else None
    return (after or kinto.AfterResourceChanged)(event.payload, kept, event.request)


def forwarder_name(prefix: str) -> str:
    """The name of the forwarder configured under ``prefix``: ``notifier.event_listeners.redis.``
    is ``redis``."""
    return prefix.rstrip(".").rsplit(".", 1)[-1]


def env_prefix(config: Configurator, prefix: str) -> str:
    """What comes before ``prefix`` in the names of the environment variables that override
    its settings: Kinto strips its project name from setting names (``kinto.event_listeners.x``
    is read as ``event_listeners.x``), not from the variables (``KINTO_EVENT_LISTENERS_X``)."""
    project = config.get_settings().get("settings_prefix")
    return f"{project}." if project and not prefix.startswith(f"{project}.") else ""


def forwarder_options(
    config: Configurator, prefix: str, known: tuple[str, ...] | None = None
) -> Options:
    """The options of the forwarder configured under ``prefix``, overridable from the
    environment. With ``known``, any option besides those and ``use``, ``actions`` and
    ``resources`` is an error."""
    return Options(
        config.get_settings(),
        prefix,
        None if known is None else (*COMMON_OPTIONS, *known),
        env_prefix=env_prefix(config, prefix),
    )


def include_forwarders(config: Configurator, prefix: str = "notifier.") -> None:
    """Load the forwarders named by ``<prefix>event_listeners``, each subscribed to
    ``ResourceChanged`` (notifier's and Kinto's) with its own filters. One that raises is
    logged, never stops the others and never fails the request (unless its messages could not
    be written to the outbox: the change must not commit without them)."""
    names_key = f"{prefix}event_listeners"
    _, names = forwarder_options(config, prefix).get("event_listeners")
    for name in split_names(names):
        if "." in name:
            # A module named directly: its options live under its last name, as in Kinto.
            short_name, use_key, use = name.rsplit(".", 1)[-1], names_key, name
        else:
            short_name = name
            use_key, use = forwarder_options(config, f"{names_key}.{name}.").get("use")
            if not use:
                raise ConfigurationError(
                    use_key, None, "the module of the listener, e.g. notifier.listeners.redis"
                )
        forwarder_prefix = f"{names_key}.{short_name}."
        try:
            load_from_config = config.maybe_dotted(use).load_from_config
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                use_key, use, f"a module with load_from_config(config, prefix): {exc}"
            ) from None
        forwarder = load_from_config(config, forwarder_prefix)
        event_filter = EventFilter.parse(forwarder_options(config, forwarder_prefix))
        guarded = _guarded(short_name, forwarder, event_filter)
        for event_class in change_events():  # notifier's, and Kinto's with kinto.includes
            config.add_subscriber(guarded, event_class)


def kinto_celery_forwarders(config: Configurator) -> list[str]:
    """The names of the Kinto event listeners that use ``notifier.listeners.celery``."""
    settings = config.get_settings()
    if settings.get("settings_prefix") != "kinto":
        return []
    return [
        name
        for name in split_names(str(settings.get("event_listeners") or ""))
        if (settings.get(f"event_listeners.{name}.use") or name) == "notifier.listeners.celery"
    ]


def _guarded(name: str, forwarder: Any, event_filter: EventFilter) -> Any:
    def call(event: ResourceChanged) -> None:
        payload = event.payload
        if not event_filter.wants(payload.get("resource_name"), payload.get("action")):
            return
        try:
            forwarder(event)
        except OutboxError:
            raise  # the change must not commit without its messages
        except Exception:
            # A forwarder must never fail the request, nor stop the others.
            logger.exception("listener %s failed on %r", name, event)

    return call
