"""What a worker checks when it starts, before it takes any message.

- It knows listeners: a worker that knows none would acknowledge every message away, so it
  refuses to start (:func:`check_listeners`), unless ``NOTIFIER_DISPATCH_ONLY=true`` says it is
  meant only to dispatch, to the listeners of other workers.
- Its Redis servers keep on disk what they hold: the broker's queues, the dead letters and the
  ordered listeners' versions (:mod:`notifier.wire.persistence`: a WARNING, never a failure).
- It announces its listeners to the fleet, and compares them with the other workers'
  (:mod:`tasks.fleet`), from a consumer step.
- With ``NOTIFIER_METRICS_PORT`` set, it serves its metrics over HTTP from its main process
  once its pool started (:mod:`tasks.metrics.endpoint`); a port it cannot listen on stops it.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from typing import Any

import redis
from celery import bootsteps, signals
from celery.platforms import EX_FAILURE
from redis.backoff import NoBackoff
from redis.retry import Retry

from notifier.errors import ConfigurationError
from notifier.wire.persistence import check_persistence, safe_url
from notifier.wire.protocol import direct_redis_url
from tasks.announcing import AnnounceListeners
from tasks.app import app, registry
from tasks.listeners.registry import Registry
from tasks.metrics import StoreCollector, mark_dead, serve
from tasks.settings import configured
from tasks.wiring import wire, wired

__all__ = ["ServeMetrics", "check_listeners", "check_redis_persistence"]

logger = logging.getLogger("notifier")


def check_listeners(
    registry: Registry, *, only_dispatches: bool, environ: Mapping[str, str] = os.environ
) -> None:
    """Raise :class:`ConfigurationError` when a worker of ``registry`` would know no
    listener and is not meant only to dispatch."""
    if len(registry) or only_dispatches:
        return
    value = environ.get("NOTIFIER_LISTENERS", "")
    allowed = (
        "this worker knows no listener, and would acknowledge every message away: name the "
        "modules of your listeners in NOTIFIER_LISTENERS (or add them with -I module), set "
        "NOTIFIER_SEARCH_RESOURCES for the built-in search index, or set "
        "NOTIFIER_DISPATCH_ONLY=true for a worker meant only to dispatch to other workers' "
        "listeners"
    )
    if value.strip():
        allowed = f"its modules register no listener; {allowed}"
    names = [
        name for name in environ if name.startswith("NOTIFIER_") and name != "NOTIFIER_LISTENERS"
    ]
    close = difflib.get_close_matches("NOTIFIER_LISTENERS", names, n=1, cutoff=0.85)
    if close:
        allowed += f" ({close[0]} is set: did you mean NOTIFIER_LISTENERS?)"
    raise ConfigurationError("NOTIFIER_LISTENERS", value, allowed)


def check_redis_persistence(conf: Any, registry: Registry) -> None:
    """Warn about each Redis of the worker (broker, dead letters, ordered listeners' versions)
    that would lose what it holds on a restart."""
    roles: dict[str, list[tuple[str, str]]] = {}  # url -> (role, what a restart loses)
    broker_url = conf.broker_url if isinstance(conf.broker_url, str) else ""
    broker = direct_redis_url(broker_url) if broker_url else None
    if broker is not None:
        roles.setdefault(broker, []).append(("the broker", "every queued message"))
    elif broker_url.startswith(("redis", "rediss", "sentinel")):
        logger.info(
            "could not check whether the broker at %s keeps its data on disk: not a plain "
            "redis:// URL",
            safe_url(broker_url),
        )
    roles.setdefault(conf.notifier_dead_letters_url, []).append(
        ("the dead letters", "the dead letters")
    )
    if any(listener.ordered for listener in registry):
        roles.setdefault(conf.notifier_order_url, []).append(
            ("the ordered listeners' versions", "the versions ordered listeners applied")
        )
    for url, held in roles.items():
        what = f"the Redis at {safe_url(url)} ({', '.join(role for role, _ in held)})"
        try:
            client = redis.Redis.from_url(
                url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0)
            )
        except ValueError as exc:
            logger.info("could not check whether %s keeps its data on disk: %s", what, exc)
            continue
        try:
            check_persistence(client, what, " and ".join(loses for _, loses in held))
        finally:
            client.close()


@signals.celeryd_after_setup.connect
def _check_at_start(instance: Any, **kwargs: Any) -> None:
    # Sent once the worker loaded every listener module (-I included), before it starts its
    # pool and consumer. An exception would only be logged by Celery's signal: SystemExit
    # stops the worker, with the error logged on one line.
    if instance.app is not app:
        return
    # The settings were checked when the loader began importing the listener modules
    # (tasks/settings.py); what is left is what needs them all loaded.
    try:
        check_listeners(registry, only_dispatches=configured(app).dispatch_only)
    except ConfigurationError as exc:
        logger.critical(
            "worker %s refuses to start: ConfigurationError: %s", instance.hostname, exc
        )
        raise SystemExit(EX_FAILURE) from exc
    # The worker's collaborators, built once, before the pool forks (tasks/wiring.py).
    wire(app, registry)
    check_redis_persistence(app.conf, registry)


class ServeMetrics(bootsteps.StartStopStep):
    """A worker step that serves the worker's metrics on ``NOTIFIER_METRICS_PORT``, from its
    main process, once its pool started; a port it cannot listen on stops the worker."""

    requires = ("celery.worker.components:Pool",)

    def include_if(self, worker: Any) -> bool:
        settings = getattr(app, "notifier_settings", None)
        return worker.app is app and getattr(settings, "metrics_port", None) is not None

    def start(self, worker: Any) -> None:
        port = configured(app).metrics_port
        assert port is not None
        built = wired(app)
        try:
            serve(port, StoreCollector(built.dead_letters, lambda: _queues(app), app))
        except OSError as exc:
            raise ConfigurationError(
                "NOTIFIER_METRICS_PORT", port, f"a port this worker can listen on ({exc})"
            ) from None
        logger.info("worker %s serves its metrics on port %d", worker.hostname, port)


def _queues(app: Any) -> list[str]:
    # The queues the worker consumes: those chosen (-Q, its listeners'), else all it knows.
    queues = app.amqp.queues
    return sorted(queues.consume_from or queues)


@signals.worker_process_shutdown.connect
def _forget_pool_process(pid: int | None = None, **kwargs: Any) -> None:
    # Sent in each pool process as it exits: its counts stay in its files, which it lets go of.
    settings = getattr(app, "notifier_settings", None)
    if pid is not None and getattr(settings, "metrics_port", None) is not None:
        mark_dead(pid)


# Workers announce their listeners to the fleet, and compare them with the others'.
app.steps["consumer"].add(AnnounceListeners)
# And serve their metrics, when asked to.
app.steps["worker"].add(ServeMetrics)
