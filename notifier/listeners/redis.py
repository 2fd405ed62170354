"""Cliquet's Redis list listener, as kinto-redis has it, published after the commit.

It pushes each committed event's payload, as JSON, into a Redis list, as Cliquet and
kinto-redis do, so their consumers keep working::

    notifier.event_listeners = redis
    notifier.event_listeners.redis.use = notifier.listeners.redis
    notifier.event_listeners.redis.url = redis://localhost:6379/0
    notifier.event_listeners.redis.listname = notifier.events

Options (each also from ``<PROJECT>_EVENT_LISTENERS_REDIS_<OPTION>``): ``url`` (default
``redis://localhost:6379/0``), ``listname`` (default ``notifier.events``), ``pool_size``
(default 25 connections), ``timeout`` (seconds for connecting and for each command, default
0.5), ``include_impacted`` (default false: also push the event's ``impacted_objects``),
``actions``, ``resources``.

Unlike kinto-redis, which pushes before the commit and holds a request about 5 s when Redis
hangs, it pushes only committed events, and a hung or absent Redis costs a request at most
``timeout``. Events are pushed with LPUSH: a consumer that pops with RPOP or BRPOP reads them
in the order they were pushed (FIFO).
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

import redis
from pyramid.settings import asbool

from notifier.errors import ConfigurationError
from notifier.events import impacted_records_of
from notifier.listeners import AfterCommitListener, listener_options
from notifier.settings import EventFilter, parse_seconds

if TYPE_CHECKING:
    from pyramid.config import Configurator

__all__ = ["Listener", "load_from_config"]

logger = logging.getLogger("notifier")

OPTIONS = ("url", "listname", "pool_size", "timeout", "include_impacted")


class Listener(AfterCommitListener):
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
        pushed = dict(payload)
        if self.include_impacted:
            pushed["impacted_objects"] = impacted_records_of(event)
        try:
            self.client.lpush(self.listname, json.dumps(pushed))
        except (TypeError, ValueError, redis.RedisError, OSError):
            # Never fail the request: say which event was not pushed, and why.
            logger.exception(
                "could not push event (%s %s %s) to the Redis list %s",
                payload.get("action"),
                payload.get("resource_name"),
                payload.get("uri"),
                self.listname,
            )


def load_from_config(config: Configurator, prefix: str) -> Listener:
    """The listener configured under ``prefix``, subscribed to committed events."""
    options = listener_options(config, prefix, OPTIONS)
    url_key, url = options.get("url", "redis://localhost:6379/0")
    _, listname = options.get("listname", "notifier.events")
    pool_key, pool_size = options.get("pool_size", "25")
    if not re.fullmatch(r"[0-9]+", pool_size) or int(pool_size) < 1:
        raise ConfigurationError(pool_key, pool_size, "a number of connections, 1 or more")
    timeout = parse_seconds(options, "timeout", "0.5")
    include_key, include_impacted = options.get("include_impacted", "false")
    if include_impacted.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        raise ConfigurationError(include_key, include_impacted, "true or false")
    try:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=int(pool_size),
            # Waiting for a free connection is bounded too.
            timeout=timeout,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
    except ValueError as exc:
        raise ConfigurationError(url_key, url, f"a redis:// URL ({exc})") from None
    listener = Listener(
        redis.Redis(connection_pool=pool),
        listname,
        EventFilter.parse(options),
        include_impacted=asbool(include_impacted),
    )
    listener.subscribe(config, prefix)
    return listener
