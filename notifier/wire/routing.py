"""The routing table: which queue a message goes to, from its resource_name and action.

Both sides read the same table: the web side to choose a queue, the worker to know which queues
to consume. A table is written as ``pattern=queue`` entries separated by spaces, commas or new
lines, where a pattern is ``<resource_name>.<action>`` and either part may be ``*``::

    article.*=articles  *.delete=deletions

The first matching entry wins; a message no entry matches goes to ``notifier``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from notifier.errors import ConfigurationError
from notifier.wire.payload import ACTIONS

__all__ = ["DEFAULT_QUEUE", "Route", "RoutingTable"]

#: The queue of every message that no route names.
DEFAULT_QUEUE = "notifier"

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
_RESOURCE_NAME = re.compile(r"^(\*|[A-Za-z0-9_]+)$")
_ACTION_PATTERNS = frozenset({"*"} | {action.value for action in ACTIONS})


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the table: ``resource_name.action=queue``, either part possibly ``*``."""

    resource_name: str
    action: str
    queue: str

    def matches(self, resource_name: str, action: str) -> bool:
        return self.resource_name in ("*", resource_name) and self.action in ("*", action)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The routes in their order: the first that matches a message names its queue."""

    routes: tuple[Route, ...] = ()

    @classmethod
    def parse(cls, text: str, key: str = "notifier.routes") -> RoutingTable:
        """Read a table; raise :class:`ConfigurationError` naming ``key`` for a bad entry."""
        normalised = re.sub(r"\s*=\s*", "=", text.strip())
        routes = []
        for entry in re.split(r"[\s,;]+", normalised):
            if not entry:
                continue
            pattern, sep, queue = entry.partition("=")
            resource_name, dot, action = pattern.partition(".")
            if not (sep and dot and queue) or "." in action:
                raise ConfigurationError(
                    key,
                    entry,
                    "write a route as <resource_name>.<action>=<queue>, e.g. article.*=q",
                )
            if not _RESOURCE_NAME.match(resource_name):
                raise ConfigurationError(key, entry, "a resource name is letters, digits, _ or *")
            if action not in _ACTION_PATTERNS:
                allowed = ", ".join(sorted(_ACTION_PATTERNS))
                raise ConfigurationError(key, entry, f"the action is one of {allowed}")
            if not _QUEUE_NAME.match(queue):
                raise ConfigurationError(key, entry, "a queue name is letters, digits and _.:-")
            routes.append(Route(resource_name, action, queue))
        return cls(tuple(routes))

    def queue_for(self, resource_name: str, action: str) -> str:
        """The queue of a message about ``action`` on ``resource_name``."""
        for route in self.routes:
            if route.matches(resource_name, action):
                return route.queue
        return DEFAULT_QUEUE

    @property
    def queues(self) -> list[str]:
        """Every queue a message can go to, the default one included, without repeats."""
        queues = [route.queue for route in self.routes]
        if not any(
            route.matches("*", "*") and route.resource_name == route.action == "*"
            for route in self.routes
        ):
            queues.append(DEFAULT_QUEUE)
        return list(dict.fromkeys(queues))
