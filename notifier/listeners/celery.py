"""The Celery bridge as a forwarder (a configured event listener): Cliquet's and Kinto's way in.

In a Pyramid app::

    notifier.event_listeners = celery
    notifier.event_listeners.celery.use = notifier.listeners.celery
    notifier.event_listeners.celery.broker_url = redis://localhost:6379/0

In Kinto::

    kinto.event_listeners = celery
    kinto.event_listeners.celery.use = notifier.listeners.celery
    kinto.event_listeners.celery.broker_url = redis://localhost:6379/0
    kinto.event_listeners.celery.actions = create update delete
    kinto.event_listeners.celery.resources = record collection

Options (each also from ``<PROJECT>_EVENT_LISTENERS_CELERY_<OPTION>``): ``broker_url``,
``routes``, ``publish_timeout``, ``spool_dir``, ``spool_retry``, ``actions``,
``resources``, with the defaults of the ``notifier.*`` settings. Kinto calls the forwarder
before the commit; it publishes after it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from notifier import publisher
from notifier.heartbeat import add_heartbeats
from notifier.listeners import Forwarder, env_prefix, forwarder_name
from notifier.settings import NotifierSettings, parse_settings
from notifier.spool import Spool
from notifier.subscriber import Subscriber
from notifier.wire import persistence

if TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = ["CeleryForwarder", "build_subscriber", "load_from_config"]


class CeleryForwarder(Forwarder):
    """Publishes each committed event to Celery (see :class:`notifier.subscriber.Subscriber`).

    Its messages are built inside the transaction, written to the outbox there when it has one,
    and published once that transaction committed.
    """

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber

    def before_commit(self, event: Any) -> Callable[[], None]:
        outgoing = self.subscriber.prepare(event)
        self.subscriber.write_to_outbox(outgoing, event.request)
        return functools.partial(self.subscriber.publish, outgoing, event.request)

    def after_commit(self, event: Any) -> None:
        self.subscriber(event)


def load_from_config(config: Configurator, prefix: str) -> CeleryForwarder:
    """The forwarder configured under ``prefix``; its host calls it with ``ResourceChanged``."""
    settings = parse_settings(
        config.get_settings(),
        prefix=prefix,
        env_prefix=env_prefix(config, prefix),
        others=("use",),
    )
    name = forwarder_name(prefix)
    forwarder = CeleryForwarder(build_subscriber(config, settings, name))
    add_heartbeats(config.registry, forwarder.subscriber, f"notifier_{name}")
    forwarder.subscribe(config, prefix)
    return forwarder


def build_subscriber(config: Configurator, settings: NotifierSettings, name: str) -> Subscriber:
    """The subscriber of ``settings``, with its publisher, and its outbox or spool (whose
    background threads start now: they publish what processes that are gone left behind)."""
    celery = publisher.CeleryPublisher(settings.broker_url, settings.publish_timeout)
    # A broker that keeps nothing on disk is noticed now, not after a restart lost the queues.
    persistence.check_broker(getattr(celery, "client", None), settings.broker_url)
    if settings.outbox is not None:
        from notifier.outbox import outbox_for  # SQLAlchemy: only with an outbox

        return Subscriber(
            settings, celery, outbox=outbox_for(config, settings.outbox, celery.publish)
        )
    spool = Spool(settings.spool_dir, celery.publish, settings.spool_retry, name=name)
    spool.start()
    return Subscriber(settings, celery, spool)
