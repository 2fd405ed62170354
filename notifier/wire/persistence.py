"""Whether a Redis keeps on disk what notifier leaves in it, checked when a process starts.

The broker's queues hold every message not yet handled, the dead-letter store what failed, the
ordered listeners' versions what each listener applied: a Redis that keeps nothing on disk
loses them all when it restarts. Web processes check the broker when they build their publisher
(:func:`notifier.listeners.celery.build_subscriber`), workers check their Redis servers when
they start (``tasks/startup.py``). The check logs a WARNING that names the settings to change;
it never fails a start-up: a Redis that cannot be reached, or that refuses ``CONFIG`` (managed
services often do), gets one INFO line saying it could not be checked.

This module imports neither Pyramid nor Celery: both sides use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

__all__ = ["check_broker", "check_persistence", "persistence_warning", "safe_url"]

logger = logging.getLogger("notifier")

#: What to set, and what each choice risks: the end of every warning.
ADVICE = (
    "set `appendonly yes` with `appendfsync everysec` (a crash of the machine loses about the "
    "last second of writes; a Redis restart loses nothing) or `appendfsync always` (loses "
    "nothing; each write waits for the disk), in redis.conf or with CONFIG SET and CONFIG "
    "REWRITE"
)


def persistence_warning(config: Mapping[str, str], what: str, loses: str) -> str | None:
    """The warning for a Redis whose ``CONFIG GET`` gave ``config`` (``appendonly``,
    ``appendfsync``, ``save``), or None when it keeps every write on disk within about a
    second. ``what`` names the Redis (``"the broker Redis at ..."``), ``loses`` what a restart
    would lose (``"every queued message"``)."""
    appendonly = config.get("appendonly", "no").lower()
    appendfsync = config.get("appendfsync", "everysec").lower()
    save = config.get("save", "").strip()
    if appendonly == "yes":
        if appendfsync in ("everysec", "always"):
            return None
        return (
            f"{what} writes its append-only file without fsync (appendonly yes, appendfsync "
            f"{appendfsync}): a crash of the machine loses {loses} that the system had not "
            "written yet (up to about 30 s); set `appendfsync everysec` (about the last "
            "second) or `appendfsync always` (nothing; each write waits for the disk)"
        )
    if not save:
        return (
            f"{what} keeps nothing on disk (appendonly no, save ''): a restart loses {loses}; "
            f"{ADVICE}"
        )
    return (
        f"{what} keeps only snapshots (appendonly no, save '{save}'): a restart loses {loses} "
        f"written since the last snapshot; {ADVICE}"
    )


def check_persistence(client: redis.Redis, what: str, loses: str) -> str | None:
    """Log whether the Redis of ``client`` keeps on disk what it is given; return the warning
    logged, if any. Never raises: a Redis that is unreachable or refuses ``CONFIG GET`` gets
    one INFO line."""
    replies: list[Mapping[Any, Any]] = []
    try:
        # One parameter per CONFIG GET: Redis before 7 takes no more.
        for name in ("appendonly", "appendfsync", "save"):
            replies.append(client.config_get(name))
    except redis.ResponseError as exc:
        logger.info("could not check whether %s keeps its data on disk: %s", what, exc)
        return None
    except (redis.RedisError, OSError) as exc:
        logger.info(
            "could not check whether %s keeps its data on disk (unreachable: %s)", what, exc
        )
        return None
    config = {_text(key): _text(value) for reply in replies for key, value in reply.items()}
    warning = persistence_warning(config, what, loses)
    if warning is None:
        logger.debug("%s keeps its data on disk: %s", what, config)
    else:
        logger.warning("%s", warning)
    return warning


def check_broker(client: redis.Redis | None, broker_url: str) -> None:
    """Check the broker at ``broker_url`` through ``client``, the publisher's own connection
    (None: the publisher goes through kombu, to a broker this check does not read)."""
    what = f"the broker Redis at {safe_url(broker_url)}"
    if client is not None:
        check_persistence(client, what, "every queued message")
    elif urlsplit(broker_url).scheme.startswith(("redis", "rediss", "sentinel")):
        logger.info(
            "could not check whether %s keeps its data on disk: published through kombu", what
        )


def safe_url(url: str) -> str:
    """``url`` without its password, for the logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:**@{netloc}", *parts[2:]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
