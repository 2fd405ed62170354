"""The worker's settings, checked once, when a worker starts.

:func:`configure` runs when Celery's loader is about to import the listener modules
(``signals.import_modules``: the first step of ``celery worker``, before its queues are chosen),
and by the commands that act as a worker does (``notifier-dead-letters``). Importing ``tasks``
reads and checks nothing. A bad setting raises :class:`~notifier.errors.ConfigurationError`,
naming the environment variable it comes from, its value and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery
from kombu import Exchange, Queue

from notifier.errors import ConfigurationError
from notifier.wire.routing import RoutingTable
from tasks.builtin.search import register_search_index
from tasks.defaults import config_module
from tasks.dispatch.pace import INLINE_BUDGET
from tasks.dispatch.run import LINGER
from tasks.listeners.registry import Registry

__all__ = [
    "VISIBILITY_TIMEOUT_MAX",
    "WorkerSettings",
    "configure",
    "configured",
    "dispatch_only",
    "queue",
]

#: The longest visibility timeout, in seconds: a dead worker's messages wait no longer than a
#: day (and far less than the redelivery counts last: tasks/dead_letters/store.py).
VISIBILITY_TIMEOUT_MAX = 24 * 3600
#: The broker URLs a worker reads: kombu's Redis transport (Sentinel too), and its in-memory one.
_BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel", "memory")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0", "")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """notifier's settings of one worker, as checked at its start."""

    routing: RoutingTable
    dead_letters_url: str
    order_url: str
    visibility_timeout: int
    dispatch_only: bool = False
    #: The longest average run of a listener that dispatch runs itself, in seconds.
    inline_budget: float = INLINE_BUDGET
    #: How long a dispatch run waits for the next message once its queue is empty, in seconds.
    linger: float = LINGER
    #: The port the worker serves its metrics on (docs/metrics.md); None: no metrics.
    metrics_port: int | None = None


def configure(app: Celery, registry: Registry) -> WorkerSettings:
    """Check the settings of ``app``'s workers, derive the transport's and the queues' from
    them, and register the built-in listeners they ask for; once per app."""
    done = getattr(app, "notifier_settings", None)
    if isinstance(done, WorkerSettings):
        return done
    module, _ = config_module()
    _load(app, module)
    conf = app.conf
    _check_broker_url(conf.broker_url)
    # Unset: the broker's Redis.
    conf.notifier_dead_letters_url = conf.notifier_dead_letters_url or conf.broker_url
    conf.notifier_order_url = conf.notifier_order_url or conf.broker_url
    _check_redis_url("NOTIFIER_DEAD_LETTERS_URL", conf.notifier_dead_letters_url)
    _check_redis_url(
        "NOTIFIER_ORDER_URL",
        conf.notifier_order_url,
        "; one Redis server of version 5 or newer, not a Cluster",
    )
    _check_listener_modules(conf.imports or ())
    only_dispatches = dispatch_only(conf)
    routing = RoutingTable.parse(conf.notifier_routes, key="NOTIFIER_ROUTES")
    # The Redis transport hands a message out again once it went unacknowledged for the
    # visibility timeout; its sweep for such messages runs every tenth of it (at least every
    # second).
    timeout = _check_visibility_timeout(conf.notifier_visibility_timeout)
    conf.notifier_visibility_timeout = timeout
    budget = _check_seconds(
        "NOTIFIER_INLINE_BUDGET", conf.get("notifier_inline_budget", INLINE_BUDGET), 60
    )
    conf.notifier_inline_budget = budget
    linger = _check_seconds(
        "NOTIFIER_DISPATCH_LINGER", conf.get("notifier_dispatch_linger", LINGER), 1
    )
    conf.notifier_dispatch_linger = linger
    metrics_port = _check_port("NOTIFIER_METRICS_PORT", conf.get("notifier_metrics_port"))
    conf.notifier_metrics_port = metrics_port
    conf.broker_transport_options = {
        "unacked_restore_interval": max(1, timeout // 10),
        "unacked_restore_throttle": 1,
        # The dispatch messages before the listeners' own tasks (tasks/broker/queue_order.py):
        # a slow listener's tasks take the pool only when no dispatch message waits.
        "queue_order_strategy": "tasks.broker.queue_order:DispatchFirst",
        **(conf.broker_transport_options or {}),
        "visibility_timeout": timeout,
    }
    # The routing table the web side uses too: the worker consumes every queue it names.
    conf.task_queues = [queue(name) for name in routing.queues]
    register_search_index(registry, conf)
    settings = WorkerSettings(
        routing,
        conf.notifier_dead_letters_url,
        conf.notifier_order_url,
        timeout,
        only_dispatches,
        budget,
        linger,
        metrics_port,
    )
    app.notifier_settings = settings  # type: ignore[attr-defined]
    return settings


def configured(app: Celery) -> WorkerSettings:
    """The settings :func:`configure` checked for ``app``; an error that says what to call if
    it did not run."""
    settings = getattr(app, "notifier_settings", None)
    if not isinstance(settings, WorkerSettings):
        raise RuntimeError(
            f"the settings of {app.main!r} are not checked yet: tasks.settings.configure(app, "
            "registry) runs when a worker starts"
        )
    return settings


def dispatch_only(conf: Mapping[str, Any]) -> bool:
    """``NOTIFIER_DISPATCH_ONLY`` (the ``notifier_dispatch_only`` setting): whether this worker
    is meant to know no listener and only dispatch."""
    value = conf.get("notifier_dispatch_only") or "false"
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError("NOTIFIER_DISPATCH_ONLY", value, "true or false")


def queue(name: str) -> Queue:
    """A queue as Celery creates one on demand, so that both sides declare the same one."""
    return Queue(name, Exchange(name), routing_key=name)


def _load(app: Celery, module: str) -> None:
    # Celery imports the configuration module when the first setting is read: here, if not
    # before.
    try:
        app.conf.get("notifier_routes")
    except ModuleNotFoundError as exc:
        # No name: kombu's own error, for a package without that module.
        if exc.name is not None and not f"{module}.".startswith(f"{exc.name}."):
            raise  # a module the configuration module imports
        raise ConfigurationError(
            "CELERY_CONFIG_MODULE",
            module,
            "a module this worker can import (from its working directory or PYTHONPATH), "
            "like notifier's celeryconfig",
        ) from None


def _check_broker_url(url: Any) -> None:
    allowed = (
        f"a URL whose scheme is one of {', '.join(_BROKER_SCHEMES)} (several URLs, for "
        "failover, separated by ;), e.g. redis://localhost:6379/0"
    )
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("CELERY_BROKER_URL", url, allowed)
    for part in url.split(";"):
        try:
            parts = urlsplit(part.strip())
            parts.port  # noqa: B018  (raises ValueError when it is no number)
        except ValueError:
            raise ConfigurationError("CELERY_BROKER_URL", url, allowed) from None
        if parts.scheme not in _BROKER_SCHEMES:
            raise ConfigurationError("CELERY_BROKER_URL", url, allowed)


def _check_redis_url(variable: str, url: Any, what: str = "") -> None:
    allowed = (
        "a Redis URL: redis://host:port/db, rediss://... (TLS) or unix:///path/to/socket" + what
    )
    try:
        # Parsed, not connected to: redis-py connects on the first command.
        redis.ConnectionPool.from_url(url)
    except (ValueError, TypeError, AttributeError):
        raise ConfigurationError(variable, url, allowed) from None


def _check_listener_modules(modules: Iterable[str] | str) -> None:
    names = [modules] if isinstance(modules, str) else list(modules)
    bad = [
        name
        for name in names
        if not isinstance(name, str)
        or not all(part.isidentifier() for part in name.split("."))
        or name.endswith(".py")
    ]
    if bad:
        raise ConfigurationError(
            "NOTIFIER_LISTENERS",
            os.environ.get("NOTIFIER_LISTENERS", " ".join(map(str, names))),
            "Python module names, separated by spaces or commas, e.g. mylisteners or "
            f"myapp.listeners (not {bad[0]!r}: a module's dotted name, not a file name or path)",
        )


def _check_visibility_timeout(value: Any) -> int:
    allowed = f"a whole number of seconds from 1 to {VISIBILITY_TIMEOUT_MAX} (a day); default 30"
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        seconds = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        raise ConfigurationError("NOTIFIER_VISIBILITY_TIMEOUT", value, allowed)
    if not 1 <= seconds <= VISIBILITY_TIMEOUT_MAX:
        raise ConfigurationError("NOTIFIER_VISIBILITY_TIMEOUT", value, allowed)
    return seconds


#: What each setting of :func:`_check_seconds` means at 0, and its default.
_SECONDS = {
    "NOTIFIER_INLINE_BUDGET": f"0 (no listener runs in dispatch); default {INLINE_BUDGET}",
    "NOTIFIER_DISPATCH_LINGER": f"0 (a run ends at an empty queue); default {LINGER}",
}


def _check_seconds(name: str, value: Any, most: float) -> float:
    zero, default = _SECONDS[name].split("; ")
    allowed = f"a number of seconds from {zero} to {most:g}; {default}"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(name, value, allowed) from None
    if isinstance(value, bool) or not 0 <= seconds <= most:
        raise ConfigurationError(name, value, allowed)
    return seconds


def _check_port(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    allowed = "a TCP port number from 1 to 65535, or unset (no metrics endpoint)"
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        port = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        port = value
    else:
        raise ConfigurationError(name, value, allowed)
    if not 1 <= port <= 65535:
        raise ConfigurationError(name, value, allowed)
    return port
