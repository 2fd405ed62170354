"""Cliquet's Redis list listener, as kinto-redis has it, as a forwarder: pushed after the commit.

It pushes each committed event's payload, as JSON, into a Redis list, as Cliquet and
kinto-redis do, so their consumers keep working::

    notifier.event_listeners = redis
    notifier.event_listeners.redis.use = notifier.listeners.redis
    notifier.event_listeners.redis.url = redis://localhost:6379/0
    notifier.event_listeners.redis.listname = notifier.events

Options (each also from ``<PROJECT>_EVENT_LISTENERS_REDIS_<OPTION>``): ``url`` (default
``redis://localhost:6379/0``), ``listname`` (default ``notifier.events``; in Kinto,
``kinto.core.events`` as kinto-redis), ``pool_size`` (default 25 connections),
``pool_timeout`` (seconds to wait for a free connection, default ``timeout``), ``timeout``
(seconds for connecting and for each command, default 0.5), ``include_impacted`` (default
false: also push the event's ``impacted_objects``), ``actions``, ``resources``.

Unlike kinto-redis, which pushes before the commit and holds a request about 5 s when Redis
hangs, it pushes only committed events; after one failure it tries no more during that request,
so a hung or absent Redis costs a request at most ``pool_timeout`` plus ``timeout``. Events are
pushed with LPUSH: a consumer that pops with RPOP or BRPOP reads them in the order they were
pushed (FIFO).
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

import redis

from notifier.errors import ConfigurationError
from notifier.events import impacted_records_of
from notifier.listeners import Forwarder, forwarder_options
from notifier.request import gave_up, give_up
from notifier.settings import EventFilter, parse_bool, parse_seconds

if TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = ["RedisForwarder", "load_from_config"]

logger = logging.getLogger("notifier")

OPTIONS = ("url", "listname", "pool_size", "pool_timeout", "timeout", "include_impacted")


class RedisForwarder(Forwarder):
    """Pushes the JSON payload of each committed event into the Redis list ``listname``."""

    def __init__(
        self,
        client: redis.Redis,
        listname: str,
        event_filter: EventFilter,
        include_impacted: bool = False,
    ) -> None:
        self.client = client
        self.listname = listname
        self.event_filter = event_filter
        self.include_impacted = include_impacted

    def after_commit(self, event: Any) -> None:
        payload = event.payload
        if not self.event_filter.wants(payload.get("resource_name"), payload.get("action")):
            return
        identity = (
            f"event ({payload.get('action')} {payload.get('resource_name')} "
            f"{payload.get('uri')}) to the Redis list {self.listname}"
        )
        if gave_up(event.request, self):
            logger.error("could not push %s: Redis failed earlier in this request", identity)
            return
        pushed = dict(payload)
        if self.include_impacted:
            pushed["impacted_objects"] = impacted_records_of(event)
        try:
            self.client.lpush(self.listname, json.dumps(pushed))
        except (TypeError, ValueError):
            logger.exception("could not push %s: not JSON", identity)
        except (redis.RedisError, OSError):
            # Never fail the request, nor wait again for this Redis during it.
            logger.exception("could not push %s", identity)
            give_up(event.request, self)


def load_from_config(config: Configurator, prefix: str) -> RedisForwarder:
    """The forwarder configured under ``prefix``, subscribed to committed events."""
    options = forwarder_options(config, prefix, OPTIONS)
    url_key, url = options.get("url", "redis://localhost:6379/0")
    # In Kinto, the list of kinto-redis, so that its consumers find the events where they were.
    in_kinto = config.get_settings().get("settings_prefix") == "kinto"
    _, listname = options.get("listname", "kinto.core.events" if in_kinto else "notifier.events")
    pool_key, pool_size = options.get("pool_size", "25")
    if not re.fullmatch(r"[0-9]+", pool_size) or int(pool_size) < 1:
        raise ConfigurationError(pool_key, pool_size, "a number of connections, 1 or more")
    timeout = parse_seconds(options, "timeout", "0.5")
    pool_timeout = parse_seconds(options, "pool_timeout", str(timeout))
    try:
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=int(pool_size), timeout=pool_timeout
        )
    except ValueError as exc:
        raise ConfigurationError(url_key, url, f"a redis:// URL ({exc})") from None
    # After from_url, which lets timeouts in the URL's query win: these are the bounds.
    pool.connection_kwargs.update(socket_connect_timeout=timeout, socket_timeout=timeout)
    forwarder = RedisForwarder(
        redis.Redis(connection_pool=pool),
        listname,
        EventFilter.parse(options),
        include_impacted=parse_bool(options, "include_impacted", "false"),
    )
    forwarder.subscribe(config, prefix)
    return forwarder
