"""The Celery app of the workers, configured from the top-level ``celeryconfig`` module.

``$CELERY_CONFIG_MODULE`` names another configuration module; it must define the ``notifier_*``
settings that ``celeryconfig.py`` defines.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals
from celery.utils.text import str_to_list
from kombu import Exchange, Queue

from notifier.errors import ConfigurationError
from notifier.routing import RoutingTable
from tasks.registry import Registry
from tasks.visibility import KeepDeliveriesVisible

__all__ = ["app", "consume", "registry", "routing"]

app = Celery("tasks")
_config_module = os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig")
app.config_from_object(_config_module)
for _setting in (
    "notifier_routes",
    "notifier_dead_letters_url",
    "notifier_order_url",
    "notifier_search_index",
    "notifier_search_resources",
    "notifier_search_parents",
):
    if app.conf.get(_setting) is None:
        raise ConfigurationError(
            _setting, None, f"define it in {_config_module}, as notifier's celeryconfig.py does"
        )

#: The routing table the web side uses too: the worker consumes every queue it names.
routing = RoutingTable.parse(app.conf.notifier_routes, key="NOTIFIER_ROUTES")


def _queue(name: str) -> Queue:
    # The shape Celery gives a queue it creates on demand, so both sides declare the same one.
    return Queue(name, Exchange(name), routing_key=name)


app.conf.task_queues = [_queue(name) for name in routing.queues]

# Malformed messages never stop a worker: its consumer keeps them as dead letters (see
# tasks/consumer.py). A configuration that names a consumer of its own keeps it, and should
# derive it from tasks.consumer.Consumer.
if app.conf.worker_consumer == "celery.worker.consumer:Consumer":
    app.conf.worker_consumer = "tasks.consumer:Consumer"


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


# Living workers keep the messages they hold from being handed out again (tasks/visibility.py).
app.steps["consumer"].add(KeepDeliveriesVisible)
