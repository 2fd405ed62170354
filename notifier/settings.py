"""The ``notifier.*`` settings, parsed once at start-up into a frozen object."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from notifier.errors import ConfigurationError
from notifier.events import ACTIONS
from notifier.routing import RoutingTable

__all__ = ["DEFAULTS", "NotifierSettings", "parse_settings", "split_names"]

PREFIX = "notifier."

#: Every setting with its default, as written in an ini file. ``None``: read from the environment.
DEFAULTS: dict[str, str | None] = {
    "broker_url": None,  # $CELERY_BROKER_URL, else redis://localhost:6379/0
    "routes": None,  # $NOTIFIER_ROUTES, else every message to the "notifier" queue
    "actions": "create update delete",
    "resources": "",  # empty: every resource
    "publish_timeout": "0.5",
}

_BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "memory")
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def split_names(value: str) -> list[str]:
    """``"create update"``, ``"record, collection"`` or one name a line: the names, in order."""
    return [name for name in re.split(r"[\s,]+", value) if name]


@dataclass(frozen=True, slots=True)
class NotifierSettings:
    """The ``notifier.*`` settings of an application, checked (see :func:`parse_settings`)."""

    broker_url: str
    routing: RoutingTable
    actions: frozenset[ACTIONS]
    resources: frozenset[str]  # empty: every resource
    publish_timeout: float

    def wants(self, resource_name: str, action: str) -> bool:
        """Whether events about ``action`` on ``resource_name`` are published."""
        return any(a.value == action for a in self.actions) and (
            not self.resources or resource_name in self.resources
        )


def parse_settings(
    settings: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> NotifierSettings:
    """Read the ``notifier.*`` keys of ``settings``; raise :class:`ConfigurationError` on the first
    bad or unknown one."""
    environ = os.environ if environ is None else environ
    unknown = sorted(
        key for key in settings if key.startswith(PREFIX) and key[len(PREFIX) :] not in DEFAULTS
    )
    if unknown:
        allowed = ", ".join(PREFIX + name for name in DEFAULTS)
        raise ConfigurationError(unknown[0], settings[unknown[0]], f"known settings are {allowed}")

    def raw(name: str) -> str:
        value = settings.get(PREFIX + name, DEFAULTS[name])
        if value is None:
            return ""
        # Settings set in code may be lists or numbers; an ini file gives strings.
        if isinstance(value, list | tuple | set | frozenset):
            return "\n".join(map(str, value))
        return str(value)

    # An error names where the value came from: the setting, or the environment variable.
    broker_key, broker_url = "notifier.broker_url", raw("broker_url")
    if not broker_url:
        broker_key = "CELERY_BROKER_URL"
        broker_url = environ.get(broker_key, "redis://localhost:6379/0")
    if urlsplit(broker_url).scheme not in _BROKER_SCHEMES:
        raise ConfigurationError(
            broker_key, broker_url, f"a URL whose scheme is one of {', '.join(_BROKER_SCHEMES)}"
        )

    routes_key, routes = "notifier.routes", raw("routes")
    if not routes:
        routes_key, routes = "NOTIFIER_ROUTES", environ.get("NOTIFIER_ROUTES", "")
    routing = RoutingTable.parse(routes, key=routes_key)

    try:
        actions = frozenset(ACTIONS.from_string_list(split_names(raw("actions"))))
    except ValueError:
        allowed = " ".join(action.value for action in ACTIONS)
        raise ConfigurationError(
            "notifier.actions", raw("actions"), f"a list of actions among: {allowed}"
        ) from None
    if not actions:
        raise ConfigurationError("notifier.actions", raw("actions"), "at least one action")

    resources = frozenset(split_names(raw("resources")))
    bad = sorted(name for name in resources if not _RESOURCE_NAME.match(name))
    if bad:
        raise ConfigurationError(
            "notifier.resources",
            raw("resources"),
            f"resource names are letters, digits and _, "
            f"separated by spaces or commas; not {bad[0]!r}",
        )

    try:
        publish_timeout = float(raw("publish_timeout"))
    except ValueError:
        publish_timeout = -1.0
    if not 0 < publish_timeout <= 60:
        raise ConfigurationError(
            "notifier.publish_timeout", raw("publish_timeout"), "a number of seconds in (0, 60]"
        )

    return NotifierSettings(
        broker_url=broker_url,
        routing=routing,
        actions=actions,
        resources=resources,
        publish_timeout=publish_timeout,
    )
