"""Configured listeners, as Cliquet and Kinto define them.

An application lists them in its settings; each names a module whose
``load_from_config(config, prefix)`` returns a listener, called with every
``ResourceChanged`` event::

    notifier.event_listeners = celery redis
    notifier.event_listeners.celery.use = notifier.listeners.celery
    notifier.event_listeners.celery.actions = create update delete
    notifier.event_listeners.celery.resources = article comment
    notifier.event_listeners.redis.use = notifier.listeners.redis
    notifier.event_listeners.redis.url = redis://localhost:6379/1

In Kinto, the same modules are named by ``kinto.event_listeners``. Each listener's options are
read under its prefix, and ``NOTIFIER_EVENT_LISTENERS_<NAME>_<OPTION>`` (in Kinto,
``KINTO_EVENT_LISTENERS_<NAME>_<OPTION>``) overrides any of them.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

from notifier.errors import ConfigurationError
from notifier.events import AfterResourceChanged, ResourceChanged
from notifier.settings import EventFilter, Options, split_names

if TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = [
    "AfterCommitListener",
    "ListenerBase",
    "after_commit_events",
    "env_prefix",
    "include_listeners",
    "kinto_celery_listeners",
    "listener_name",
    "listener_options",
]

logger = logging.getLogger("notifier")

#: The options every configured listener has, whatever its module.
COMMON_OPTIONS = ("use", "actions", "resources")


class ListenerBase:
    """A configured listener: called with each ``ResourceChanged`` event it asked for."""

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


class AfterCommitListener(ListenerBase):
    """A listener whose work waits for the commit.

    Kinto and notifier call configured listeners with ``ResourceChanged``, inside the
    transaction. This kind of listener lets those calls pass, and does its work
    (:meth:`after_commit`) when called with ``AfterResourceChanged``, which is notified only
    once the transaction committed: :meth:`subscribe` asks for it. A rolled-back request, or an
    aborted Kinto batch, reaches nothing.
    """

    #: The name the listener is configured under, for the logs.
    name = ""

    def __call__(self, event: Any) -> None:
        if not isinstance(event, after_commit_events()):
            return
        try:
            self.after_commit(event)
        except Exception:
            # The commit is done: a listener's failure must not reach the request, nor keep
            # the other listeners from the event.
            logger.exception("listener %s failed after the commit on %r", self.name, event)

    def after_commit(self, event: Any) -> None:
        raise NotImplementedError

    def subscribe(self, config: Configurator, prefix: str) -> None:
        """Have this listener, configured under ``prefix``, called with committed events."""
        self.name = listener_name(prefix)
        for event_class in after_commit_events():
            config.add_subscriber(self, event_class)


def listener_name(prefix: str) -> str:
    """The name of the listener configured under ``prefix``: ``notifier.event_listeners.redis.``
    is ``redis``."""
    return prefix.rstrip(".").rsplit(".", 1)[-1]


def env_prefix(config: Configurator, prefix: str) -> str:
    """What comes before ``prefix`` in the names of the environment variables that override
    its settings: Kinto strips its project name from setting names (``kinto.event_listeners.x``
    is read as ``event_listeners.x``), not from the variables (``KINTO_EVENT_LISTENERS_X``)."""
    project = config.get_settings().get("settings_prefix")
    return f"{project}." if project and not prefix.startswith(f"{project}.") else ""


def listener_options(
    config: Configurator, prefix: str, known: tuple[str, ...] | None = None
) -> Options:
    """The options of the configured listener under ``prefix``, overridable from the
    environment. With ``known``, any option besides those and ``use``, ``actions`` and
    ``resources`` is an error."""
    return Options(
        config.get_settings(),
        prefix,
        None if known is None else (*COMMON_OPTIONS, *known),
        env_prefix=env_prefix(config, prefix),
    )


def include_listeners(config: Configurator, prefix: str = "notifier.") -> None:
    """Load the listeners named by ``<prefix>event_listeners``, each subscribed to
    ``ResourceChanged`` with its own filters. One that raises is logged, never stops the
    others and never fails the request."""
    names_key = f"{prefix}event_listeners"
    _, names = listener_options(config, prefix).get("event_listeners")
    for name in split_names(names):
        if "." in name:
            # A module named directly: its options live under its last name, as in Kinto.
            short_name, use_key, use = name.rsplit(".", 1)[-1], names_key, name
        else:
            short_name = name
            use_key, use = listener_options(config, f"{names_key}.{name}.").get("use")
            if not use:
                raise ConfigurationError(
                    use_key, None, "the module of the listener, e.g. notifier.listeners.redis"
                )
        listener_prefix = f"{names_key}.{short_name}."
        try:
            load_from_config = config.maybe_dotted(use).load_from_config
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                use_key, use, f"a module with load_from_config(config, prefix): {exc}"
            ) from None
        listener = load_from_config(config, listener_prefix)
        event_filter = EventFilter.parse(listener_options(config, listener_prefix))
        config.add_subscriber(_guarded(short_name, listener, event_filter), ResourceChanged)


def kinto_celery_listeners(config: Configurator) -> list[str]:
    """The names of the Kinto event listeners that use ``notifier.listeners.celery``."""
    settings = config.get_settings()
    if settings.get("settings_prefix") != "kinto":
        return []
    return [
        name
        for name in split_names(str(settings.get("event_listeners") or ""))
        if (settings.get(f"event_listeners.{name}.use") or name) == "notifier.listeners.celery"
    ]


def _guarded(name: str, listener: Any, event_filter: EventFilter) -> Any:
    def call(event: ResourceChanged) -> None:
        payload = event.payload
        if not event_filter.wants(payload.get("resource_name"), payload.get("action")):
            return
        try:
            listener(event)
        except Exception:
            # A configured listener must never fail the request, nor stop the others.
            logger.exception("listener %s failed on %r", name, event)

    return call
