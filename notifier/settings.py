"""The ``notifier.*`` settings, parsed once at start-up into a frozen object."""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from notifier.errors import ConfigurationError
from notifier.wire.payload import ACTIONS, split_names
from notifier.wire.routing import RoutingTable

__all__ = [
    "DEFAULTS",
    "EventFilter",
    "NotifierSettings",
    "Options",
    "OutboxSettings",
    "environment_variable",
    "parse_bool",
    "parse_seconds",
    "parse_settings",
]

PREFIX = "notifier."

#: Every setting with its default, as written in an ini file. ``None``: read from the environment.
DEFAULTS: dict[str, str | None] = {
    "broker_url": None,  # $CELERY_BROKER_URL, else redis://localhost:6379/0
    "routes": None,  # $NOTIFIER_ROUTES, else every message to the "notifier" queue
    "actions": "create update delete",
    "resources": "",  # empty: every resource
    "publish_timeout": "0.5",
    "spool_dir": None,  # $NOTIFIER_SPOOL_DIR, else notifier-spool in the working directory
    "spool_retry": "1",
    "max_message_size": "262144",  # bytes of records per message: a larger event comes in parts
    "outbox": "false",  # true: messages commit with the data, in the database's outbox table
    "outbox_url": None,  # sqlalchemy.url; in Kinto, its storage_url
    "outbox_session": "dbsession",  # the request's SQLAlchemy session (not in Kinto)
    "outbox_relay": "true",  # whether this process runs a relay thread
    "outbox_relay_after": "10",  # seconds after which the relay publishes a row left behind
}

_BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "memory")
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def environment_variable(key: str) -> str:
    """The variable that overrides a setting: ``notifier.event_listeners.redis.url`` is
    ``NOTIFIER_EVENT_LISTENERS_REDIS_URL``."""
    return re.sub(r"[.-]", "_", key).upper()


class Options:
    """The options of one prefix (``notifier.``, ``notifier.event_listeners.redis.``...), each
    read once, with the key it came from so that an error can name it.

    Unknown options under the prefix are an error (unless ``known`` is ``None``); ``others`` are
    options read elsewhere, with their sub-keys. With ``env_prefix``, an environment variable
    named after the option (see :func:`environment_variable`) overrides the setting.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        prefix: str,
        known: Collection[str] | None,
        environ: Mapping[str, str] | None = None,
        *,
        env_prefix: str | None = None,
        others: Collection[str] = (),
    ) -> None:
        self.settings = settings
        self.prefix = prefix
        self.environ = os.environ if environ is None else environ
        self.env_prefix = env_prefix
        if known is None:  # a view of options that their owner checks
            return
        unknown = sorted(
            key
            for key in settings
            if key.startswith(prefix)
            and key[len(prefix) :] not in known
            and not any(key.startswith(f"{prefix}{other}.") for other in others)
        )
        if unknown:
            allowed = ", ".join(prefix + name for name in known)
            raise ConfigurationError(
                unknown[0], settings[unknown[0]], f"known settings are {allowed}"
            )

    def get(self, name: str, default: str = "") -> tuple[str, str]:
        """The key a value came from, as the operator wrote it, and the value as a string
        (lists joined by new lines)."""
        key = self.prefix + name
        if self.env_prefix is not None:
            written = f"{self.env_prefix}{key}"  # Kinto's settings lose their "kinto." prefix
            variable = environment_variable(written)
            if variable in self.environ:
                return variable, self.environ[variable]
        else:
            written = key
        value = self.settings.get(key)
        if value is None:
            return written, default
        # Settings set in code may be lists or numbers; an ini file gives strings.
        if isinstance(value, list | tuple | set | frozenset):
            return written, "\n".join(map(str, value))
        return written, str(value)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a publisher or a forwarder wants: by action, and by resource name."""

    actions: frozenset[ACTIONS]
    resources: frozenset[str]  # empty: every resource

    def wants(self, resource_name: str | None, action: str | None) -> bool:
        """Whether events about ``action`` on ``resource_name`` pass the filter."""
        return any(a.value == action for a in self.actions) and (
            not self.resources or resource_name in self.resources
        )

    @classmethod
    def parse(cls, options: Options) -> EventFilter:
        """Read ``actions`` (default create update delete) and ``resources`` (default all)."""
        actions_key, actions_value = options.get("actions", "create update delete")
        try:
            actions = frozenset(ACTIONS.from_string_list(split_names(actions_value)))
        except ValueError:
            allowed = " ".join(action.value for action in ACTIONS)
            raise ConfigurationError(
                actions_key, actions_value, f"a list of actions among: {allowed}"
            ) from None
        if not actions:
            raise ConfigurationError(actions_key, actions_value, "at least one action")
        resources_key, resources_value = options.get("resources")
        resources = frozenset(split_names(resources_value))
        bad = sorted(name for name in resources if not _RESOURCE_NAME.match(name))
        if bad:
            raise ConfigurationError(
                resources_key,
                resources_value,
                f"resource names are letters, digits and _, separated by spaces or commas; "
                f"not {bad[0]!r}",
            )
        return cls(actions, resources)


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True}
_BOOLEANS |= {"false": False, "no": False, "off": False, "0": False}


def parse_bool(options: Options, name: str, default: str) -> bool:
    """``true`` or ``false`` (also yes/no, on/off, 1/0)."""
    key, value = options.get(name, default)
    try:
        return _BOOLEANS[value.strip().lower()]
    except KeyError:
        raise ConfigurationError(key, value, "true or false") from None


def parse_seconds(options: Options, name: str, default: str, most: float = 60) -> float:
    """A number of seconds in (0, ``most``]."""
    key, value = options.get(name, default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= most:
        raise ConfigurationError(key, value, f"a number of seconds in (0, {most:g}]")
    return seconds


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """Where the outbox is, and how its relay runs (see :mod:`notifier.outbox`)."""

    url: str
    url_key: str
    session: str  # a request attribute, or the dotted name of a function of the request
    session_key: str
    relay: bool
    relay_after: float


@dataclass(frozen=True, slots=True)
class NotifierSettings(EventFilter):
    """The settings of a Celery publisher: ``notifier.*``, or a Celery forwarder's."""

    broker_url: str
    routing: RoutingTable
    publish_timeout: float
    spool_dir: str
    spool_retry: float
    max_message_size: int
    outbox: OutboxSettings | None = None  # None: no outbox, the spool


def parse_settings(
    settings: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    prefix: str = PREFIX,
    env_prefix: str | None = None,
    others: Collection[str] = ("event_listeners",),
) -> NotifierSettings:
    """Read the Celery publishing settings under ``prefix`` (default ``notifier.``); raise
    :class:`ConfigurationError` on the first bad or unknown one.

    ``broker_url`` and ``routes`` fall back on ``$CELERY_BROKER_URL`` and ``$NOTIFIER_ROUTES``.
    """
    environ = os.environ if environ is None else environ
    known = [*DEFAULTS, *others]
    options = Options(settings, prefix, known, environ, env_prefix=env_prefix, others=others)

    # An error names where the value came from: the setting, or the environment variable.
    broker_key, broker_url = options.get("broker_url")
    if not broker_url:
        broker_key = "CELERY_BROKER_URL"
        broker_url = environ.get(broker_key, "redis://localhost:6379/0")
    if urlsplit(broker_url).scheme not in _BROKER_SCHEMES:
        raise ConfigurationError(
            broker_key, broker_url, f"a URL whose scheme is one of {', '.join(_BROKER_SCHEMES)}"
        )

    routes_key, routes = options.get("routes")
    if not routes:
        routes_key, routes = "NOTIFIER_ROUTES", environ.get("NOTIFIER_ROUTES", "")
    routing = RoutingTable.parse(routes, key=routes_key)

    outbox = _parse_outbox(options, settings)
    spool_key, spool_dir = options.get("spool_dir")
    if not spool_dir:
        spool_key = "NOTIFIER_SPOOL_DIR"
        spool_dir = environ.get(spool_key, "notifier-spool")
    # Checked now, not when the broker first fails: the spool must be there when it does.
    existing = os.path.abspath(spool_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if outbox is None and (not os.path.isdir(existing) or not os.access(existing, os.W_OK)):
        raise ConfigurationError(
            spool_key, spool_dir, "a directory this process can create or write to"
        )

    event_filter = EventFilter.parse(options)
    return NotifierSettings(
        actions=event_filter.actions,
        resources=event_filter.resources,
        broker_url=broker_url,
        routing=routing,
        publish_timeout=parse_seconds(options, "publish_timeout", "0.5"),
        spool_dir=spool_dir,
        spool_retry=parse_seconds(options, "spool_retry", "1"),
        max_message_size=_parse_size(options, "max_message_size", "262144"),
        outbox=outbox,
    )


def _parse_outbox(options: Options, settings: Mapping[str, Any]) -> OutboxSettings | None:
    if not parse_bool(options, "outbox", "false"):
        return None
    in_kinto = settings.get("settings_prefix") == "kinto"
    url_key, url = options.get("outbox_url")
    if not url:
        # The database of the data: Kinto's storage (its settings lose their "kinto." prefix),
        # or the engine of Pyramid's SQLAlchemy starter.
        url_key = "kinto.storage_url" if in_kinto else "sqlalchemy.url"
        url = str(settings.get("storage_url" if in_kinto else "sqlalchemy.url") or "")
    if not url.startswith(("postgresql", "sqlite")):
        raise ConfigurationError(
            url_key, url or None, "the outbox's database: a postgresql:// or sqlite:// URL"
        )
    session_key, session = options.get("outbox_session", "dbsession")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:]*", session):
        raise ConfigurationError(
            session_key,
            session,
            "the request attribute holding its SQLAlchemy session (dbsession), or the dotted "
            "name of a function of the request that returns it",
        )
    return OutboxSettings(
        url=url,
        url_key=url_key,
        session=session,
        session_key=session_key,
        relay=parse_bool(options, "outbox_relay", "true"),
        relay_after=parse_seconds(options, "outbox_relay_after", "10", most=3600),
    )


def _parse_size(options: Options, name: str, default: str) -> int:
    key, value = options.get(name, default)
    if not re.fullmatch(r"[0-9]+", value) or not 1024 <= int(value) <= 64 * 1024 * 1024:
        raise ConfigurationError(key, value, "a number of bytes from 1024 to 67108864 (64 MiB)")
    return int(value)
