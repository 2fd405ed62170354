"""The Celery app of the workers, configured from the top-level ``celeryconfig`` module.

``$CELERY_CONFIG_MODULE`` names another configuration module; it must define the ``notifier_*``
settings that ``celeryconfig.py`` defines. Each setting is checked here, when the app is
configured: a bad one raises :class:`~notifier.errors.ConfigurationError`, naming the
environment variable it comes from, its value and what is allowed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery, signals
from celery.utils.text import str_to_list
from kombu import Exchange, Queue

from notifier.errors import ConfigurationError
from notifier.wire.routing import RoutingTable
from tasks.broker.visibility import KeepDeliveriesVisible
from tasks.listeners.registry import Registry

__all__ = ["app", "consume", "registry", "routing"]

#: The longest visibility timeout, in seconds: a dead worker's messages wait no longer than a
#: day (and far less than the redelivery counts last: tasks/dead_letters/store.py).
VISIBILITY_TIMEOUT_MAX = 24 * 3600
#: The broker URLs a worker reads: kombu's Redis transport (Sentinel too), and its in-memory one.
_BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel", "memory")
_SETTINGS = (
    "notifier_routes",
    "notifier_dead_letters_url",
    "notifier_order_url",
    "notifier_visibility_timeout",
    "notifier_search_index",
    "notifier_search_resources",
    "notifier_search_parents",
)


def _load_settings(app: Celery, module: str) -> None:
    # Celery imports the configuration module when the first setting is read: here.
    try:
        missing = [name for name in _SETTINGS if app.conf.get(name) is None]
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
    if missing:
        raise ConfigurationError(
            missing[0], None, f"define it in {module}, as notifier's celeryconfig.py does"
        )


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


app = Celery("tasks")
_config_module = os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig")
app.config_from_object(_config_module)
_load_settings(app, _config_module)
_check_broker_url(app.conf.broker_url)
_check_redis_url("NOTIFIER_DEAD_LETTERS_URL", app.conf.notifier_dead_letters_url)
_check_redis_url(
    "NOTIFIER_ORDER_URL",
    app.conf.notifier_order_url,
    "; one Redis server of version 5 or newer, not a Cluster",
)
_check_listener_modules(app.conf.imports or ())

#: The routing table the web side uses too: the worker consumes every queue it names.
routing = RoutingTable.parse(app.conf.notifier_routes, key="NOTIFIER_ROUTES")

# The Redis transport hands a message out again once it went unacknowledged for the visibility
# timeout; its sweep for such messages runs every tenth of it (at least every second).
_visibility_timeout = _check_visibility_timeout(app.conf.notifier_visibility_timeout)
app.conf.notifier_visibility_timeout = _visibility_timeout
app.conf.broker_transport_options = {
    "unacked_restore_interval": max(1, _visibility_timeout // 10),
    "unacked_restore_throttle": 1,
    **(app.conf.broker_transport_options or {}),
    "visibility_timeout": _visibility_timeout,
}


def _queue(name: str) -> Queue:
    # The shape Celery gives a queue it creates on demand, so both sides declare the same one.
    return Queue(name, Exchange(name), routing_key=name)


app.conf.task_queues = [_queue(name) for name in routing.queues]

# Malformed messages never stop a worker: its consumer keeps them as dead letters (see
# tasks/broker/consumer.py). A configuration that names a consumer of its own keeps it, and should
# derive it from tasks.broker.consumer.Consumer.
if app.conf.worker_consumer == "celery.worker.consumer:Consumer":
    app.conf.worker_consumer = "tasks.broker.consumer:Consumer"


class _ListenerQueues:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.chosen_on_command_line = False
        self.excluded: set[str] = set()


_listener_queues = _ListenerQueues()


def consume(queue: str) -> None:
    """Have workers consume ``queue`` (a listener's) unless ``-Q`` or ``-X`` say otherwise."""
    _listener_queues.names.add(queue)


@signals.celeryd_init.connect
def _remember_queue_options(options: dict[str, Any], **kwargs: Any) -> None:
    _listener_queues.chosen_on_command_line = bool(options.get("queues"))
    excluded = options.get("exclude_queues") or []
    _listener_queues.excluded = set(
        str_to_list(excluded) if isinstance(excluded, str) else excluded
    )


@signals.celeryd_after_setup.connect
def _consume_listener_queues(instance: Any, **kwargs: Any) -> None:
    # Listener modules loaded with -I are imported after the worker chose its queues, so their
    # queues are added here, once every module is loaded. A worker consumes the queue of every
    # listener it has, and only those: it never takes a listener task it cannot run. An
    # explicit -Q or -X is the operator's choice and wins.
    if not _listener_queues.chosen_on_command_line:
        for name in sorted(_listener_queues.names - _listener_queues.excluded):
            instance.app.amqp.queues.select_add(_queue(name))


#: Every listener of this worker, registered by ``@tasks.listener``.
registry = Registry(app, on_new_queue=consume)


# Living workers keep the messages they hold from being handed out again
# (tasks/broker/visibility.py).
app.steps["consumer"].add(KeepDeliveriesVisible)
