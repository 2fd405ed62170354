"""The Celery bridge as a configured listener: Cliquet's and Kinto's way in.

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
``resources``, with the defaults of the ``notifier.*`` settings. Kinto calls the listener
before the commit; it publishes after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from notifier import publisher
from notifier.listeners import AfterCommitListener, env_prefix, listener_name
from notifier.settings import parse_settings
from notifier.spool import Spool
from notifier.subscriber import Subscriber

if TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = ["Listener", "load_from_config"]


class Listener(AfterCommitListener):
    """Publishes each committed event to Celery (see :class:`notifier.subscriber.Subscriber`)."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber

    def after_commit(self, event: Any) -> None:
        self.subscriber(event)


def load_from_config(config: Configurator, prefix: str) -> Listener:
    """The listener configured under ``prefix``, subscribed to committed events."""
    settings = parse_settings(
        config.get_settings(),
        prefix=prefix,
        env_prefix=env_prefix(config, prefix),
        others=("use",),
    )
    celery = publisher.CeleryPublisher(settings.broker_url, settings.publish_timeout)
    spool = Spool(
        settings.spool_dir, celery.publish, settings.spool_retry, name=listener_name(prefix)
    )
    spool.start()  # what processes that are gone left behind
    listener = Listener(Subscriber(settings, celery, spool))
    listener.subscribe(config, prefix)
    return listener
