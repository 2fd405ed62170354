"""The Celery app of the workers.

Its settings are notifier's defaults (:mod:`tasks.defaults`, from the environment) beneath the
configuration module's: ``$CELERY_CONFIG_MODULE``, else ``celeryconfig`` when there is one, which
sets only what it changes. Nothing is read at import: :func:`tasks.settings.configure` checks
every setting once, when a worker starts, before it imports the listener modules.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from celery.utils.text import str_to_list

from tasks import defaults
from tasks.broker.visibility import KeepDeliveriesVisible
from tasks.broker.worker_view import ShareWorkerView
from tasks.listeners.registry import Registry
from tasks.settings import configure, queue

__all__ = ["app", "consume", "registry"]

app = Celery("tasks")
# Read when a setting is first read (tasks/defaults.py), not before.
app.config_from_object(defaults.Configuration())


class _ListenerQueues:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.chosen_on_command_line = False
        self.excluded: set[str] = set()


_listener_queues = _ListenerQueues()


def consume(name: str) -> None:
    """Have workers consume the queue ``name`` (a listener's) unless ``-Q`` or ``-X`` say
    otherwise."""
    _listener_queues.names.add(name)


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
            instance.app.amqp.queues.select_add(queue(name))


#: Every listener of this worker, registered by ``@tasks.listener``.
registry = Registry(app, on_new_queue=consume)


@signals.import_modules.connect(sender=app)
def _configure_at_start(sender: Celery, **kwargs: Any) -> None:
    # Sent by Celery's loader before it imports the listener modules: the first step of a
    # worker's start. An error raised here stops the worker (the loader raises it again).
    configure(sender, registry)


# Living workers keep the messages they hold from being handed out again
# (tasks/broker/visibility.py).
app.steps["consumer"].add(KeepDeliveriesVisible)
# Its pool processes see what its main process knows of task events, rate limits and revokes,
# and it sees which listener they run in dispatch (tasks/broker/worker_view.py).
app.steps["consumer"].add(ShareWorkerView)
