"""The worker's defaults, read from the environment when a worker first reads its settings.

``tasks.app`` reads them beneath the configuration module's (``$CELERY_CONFIG_MODULE``, else
``celeryconfig`` when there is one: :class:`Configuration`), so a deployment's own module sets
only what it changes.
The web side reads the same environment variables (``CELERY_BROKER_URL``, ``NOTIFIER_ROUTES``)
when its own ``notifier.*`` settings leave them out, so one deployment declares its broker and
routing table once. What is read here is checked once, at worker start (:mod:`tasks.settings`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Configuration", "config_module", "from_environment"]


def from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The worker's settings as ``environ`` sets them, with the defaults for the rest."""
    return {
        "broker_url": environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
        # JSON only: a worker never unpickles what it reads from a queue.
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        # A listener's message is acknowledged once the listener finished, not when it
        # started, so a worker that dies mid-listener leaves the message to be delivered again.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A pool process killed mid-listener counts as a failed attempt: the listener is tried
        # again (at once), until its max_retries are spent; then its message goes to the dead
        # letters.
        "task_retry_on_worker_lost": True,
        # Malformed messages never stop a worker: its consumer dead-letters them
        # (tasks/broker/consumer.py). A module that names a consumer of its own should derive it
        # from tasks.broker.consumer.Consumer.
        "worker_consumer": "tasks.broker.consumer:Consumer",
        "task_soft_time_limit": 240,
        "task_time_limit": 300,
        # The Redis transport hands an unacknowledged message out again once it is older than
        # the visibility timeout: a short one brings back the messages of a worker that died
        # (SIGKILL, a lost machine) within seconds. Living workers refresh the messages they
        # hold (tasks/broker/visibility.py), so that a listener still running is not handed out
        # twice. In seconds; the transport's visibility_timeout and its sweep for abandoned
        # messages are derived from it at start.
        "notifier_visibility_timeout": environ.get("NOTIFIER_VISIBILITY_TIMEOUT", "30"),
        # The modules of listeners every worker imports (space or comma separated), so that
        # all the workers that dispatch events know the same listeners. `celery worker -I
        # module` adds more.
        "imports": environ.get("NOTIFIER_LISTENERS", "").replace(",", " ").split(),
        # A worker that knows no listener refuses to start, unless it is meant only to
        # dispatch (to the listeners other workers know): NOTIFIER_DISPATCH_ONLY=true.
        "notifier_dispatch_only": environ.get("NOTIFIER_DISPATCH_ONLY", "false"),
        "notifier_routes": environ.get("NOTIFIER_ROUTES", ""),
        # The longest average run, in seconds, of a listener that dispatch runs itself
        # (tasks/dispatch/pace.py); a slower one gets its own task. 0: every listener does.
        "notifier_inline_budget": environ.get("NOTIFIER_INLINE_BUDGET", "0.02"),
        # How long, in seconds, a dispatch run waits for the next message once its queue is
        # empty, before it ends (tasks/dispatch/run.py). 0: it ends at once.
        "notifier_dispatch_linger": environ.get("NOTIFIER_DISPATCH_LINGER", "0.02"),
        # The port the worker serves its metrics on (tasks/metrics/endpoint.py); None: none.
        "notifier_metrics_port": environ.get("NOTIFIER_METRICS_PORT"),
        # None: the broker's Redis (tasks.settings reads the broker URL the worker ends with).
        "notifier_dead_letters_url": environ.get("NOTIFIER_DEAD_LETTERS_URL"),
        "notifier_order_url": environ.get("NOTIFIER_ORDER_URL"),
        "notifier_search_index": environ.get("NOTIFIER_SEARCH_INDEX", "search-index.sqlite3"),
        "notifier_search_resources": environ.get("NOTIFIER_SEARCH_RESOURCES", ""),
        "notifier_search_parents": environ.get("NOTIFIER_SEARCH_PARENTS", ""),
    }


def config_module(environ: Mapping[str, str] = os.environ) -> tuple[str, bool]:
    """The configuration module's name, and whether it may be missing: ``$CELERY_CONFIG_MODULE``
    (it must exist), else ``celeryconfig`` (when there is one)."""
    name = environ.get("CELERY_CONFIG_MODULE")
    return (name, False) if name else ("celeryconfig", True)


class Configuration(Mapping[str, Any]):
    """A worker's settings: :func:`from_environment` with the public names of the configuration
    module (:func:`config_module`) over them, read the first time Celery asks
    (``app.config_from_object`` takes a mapping). Celery's own ``add_defaults`` would not do:
    what it adds wins over the configuration module. A module that must exist and does not
    raises its ``ModuleNotFoundError`` then.
    """

    def __init__(self) -> None:
        self._settings: dict[str, Any] | None = None

    def _read(self) -> dict[str, Any]:
        if self._settings is None:
            settings = from_environment()
            module, silent = config_module()
            try:
                source = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if not (silent and exc.name == module):
                    raise
            else:
                settings.update(
                    (name, getattr(source, name))
                    for name in dir(source)
                    if not name.startswith("_")
                )
            self._settings = settings
        return self._settings

    def __getitem__(self, name: str) -> Any:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())
