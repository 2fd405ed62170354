"""notifier: run Pyramid resource-change listeners out of process, in Celery workers.

Include it in a Pyramid application, either in code::

    config.include("notifier")

or in the ini file::

    pyramid.includes = notifier

Views then declare each change to a record::

    request.notify_resource_changed("create", "article", article_id, new=article)

Once the transaction commits (with pyramid_tm; without it, once the response is successful),
every change is published as a Celery task message to the queue that the routing table picks
from its resource_name and action, and runs in the workers' listeners (see the ``tasks``
package). Nothing is published for a failed or rolled-back request, and a broker error never
fails a request. Settings (all optional, see docs/settings.md): ``notifier.broker_url``,
``notifier.routes``, ``notifier.actions``, ``notifier.resources``, ``notifier.publish_timeout``,
and ``notifier.event_listeners`` for forwarders, Kinto-style configured event listeners (see
``notifier.listeners``).

In Kinto, ``kinto.includes = notifier`` publishes Kinto's committed events the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = ["includeme"]


def includeme(config: Configurator) -> None:
    """Add ``request.notify_resource_changed`` and the publishing of committed events: by the
    forwarders of ``notifier.event_listeners`` when set, else by Celery with the ``notifier.*``
    settings."""
    # Imported here, not at the top: the worker side imports notifier.wire.message and
    # notifier.wire.routing, and must not import Pyramid through this module.
    from notifier.errors import ConfigurationError
    from notifier.listeners import change_events, include_forwarders, kinto_celery_forwarders
    from notifier.listeners.celery import CeleryForwarder, build_subscriber
    from notifier.request import notify_resource_changed
    from notifier.settings import DEFAULTS, Options, parse_settings

    config.add_request_method(notify_resource_changed, "notify_resource_changed")
    settings = config.get_settings()
    _, configured = Options(settings, "notifier.", None, env_prefix="").get("event_listeners")
    if configured:
        for name in DEFAULTS:
            if f"notifier.{name}" in settings:
                raise ConfigurationError(
                    f"notifier.{name}",
                    settings[f"notifier.{name}"],
                    "nothing here while notifier.event_listeners is set: give it to a "
                    f"forwarder instead, e.g. notifier.event_listeners.celery.{name}",
                )
        # Any other notifier.* key is unknown: Options says so.
        Options(settings, "notifier.", ("event_listeners",), others=("event_listeners",))
        include_forwarders(config, "notifier.")
        return
    publishing = parse_settings(settings)
    in_kinto = kinto_celery_forwarders(config)
    if in_kinto:
        raise ConfigurationError(
            "kinto.includes",
            "notifier",
            f"kinto.includes = notifier or a notifier.listeners.celery event listener "
            f"({', '.join(in_kinto)}), not both: each would publish every event",
        )
    subscriber = build_subscriber(config, publishing, "notifier")
    config.registry["notifier.settings"] = publishing
    config.registry["notifier.publisher"] = subscriber.publisher
    from notifier.heartbeat import add_heartbeats

    add_heartbeats(config.registry, subscriber, "notifier")  # Kinto's /__heartbeat__
    # notifier's ResourceChanged, and Kinto's with kinto.includes = notifier.
    CeleryForwarder(subscriber).subscribe(config, "notifier.", change_events())
