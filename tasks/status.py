"""What the worker side knows of the pipeline's state, for ``notifier status``.

Read as a worker is configured (``$CELERY_CONFIG_MODULE``, ``CELERY_BROKER_URL``,
``NOTIFIER_ROUTES``, ``NOTIFIER_DEAD_LETTERS_URL``): the queues (the routing table's, the
listeners' this process knows, and every queue a live worker consumes), the depth of each and the
``committed_at`` of its oldest message, the workers (those that answer a ping, and what each
announced to the fleet, :mod:`tasks.fleet`), and the dead letters by listener.

Only reads, except what reading the fleet does anyway: the records of dead workers are deleted
(:meth:`tasks.fleet.Fleet.live`).
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import KombuError
from kombu.utils.url import maybe_sanitize_url

from notifier.errors import NotifierError
from notifier.wire.message import DISPATCH_TASK
from notifier.wire.protocol import redis_url
from tasks.app import app, registry
from tasks.broker.taken import Taken
from tasks.dead_letters.store import DeadLetters
from tasks.defaults import config_module, from_environment
from tasks.fleet import Fleet, WorkerRecord
from tasks.settings import configure

__all__ = [
    "LetterCount",
    "QueueState",
    "Unreachable",
    "WorkerSide",
    "WorkerState",
    "connect",
    "ping_workers",
    "problems",
    "read",
    "registered_tasks",
    "report",
]

_REDIS_SCHEMES = ("redis", "rediss", "redis+socket")


class Unreachable(Exception):
    """Raised when a Redis that status reads does not answer; the message names it (its URL
    masked, and where the URL came from)."""

    def __init__(self, what: str, exc: Exception) -> None:
        super().__init__(f"{what} cannot be reached: {exc}")


@dataclass(frozen=True, slots=True)
class QueueState:
    """One queue: how many messages wait in it, when the oldest was committed, who takes it."""

    name: str
    depth: int
    oldest_committed_at: float | None  # None: empty, or a message without committed_at
    consumers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker: whether it answered the ping, and what it announced or Celery says."""

    hostname: str
    answered: bool
    announced: bool  # it has a live record in the fleet
    queues: tuple[str, ...]
    listeners: tuple[str, ...]  # the fleet's; else the task names ``inspect registered`` gives


@dataclass(frozen=True, slots=True)
class LetterCount:
    """How many dead letters one listener has (``listener`` None: malformed messages)."""

    listener: str | None
    count: int


@dataclass(frozen=True, slots=True)
class WorkerSide:
    """What the worker side knows; the URLs are masked."""

    broker_url: str
    dead_letters_url: str
    sources: tuple[str, ...]  # where each URL came from, one line each
    queues: tuple[QueueState, ...]
    workers: tuple[WorkerState, ...]
    dead_letters: tuple[LetterCount, ...]
    notes: tuple[str, ...] = field(default=())  # what could not be read, and why


def connect(url: str) -> redis.Redis:
    """A client of the Redis at ``url`` whose every operation waits 2 s at most."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def ping_workers(celery: Celery, timeout: float) -> list[str]:
    """The hostnames of the workers that answer a ping within ``timeout`` seconds."""
    answers = celery.control.ping(timeout=timeout) or []
    return sorted(hostname for answer in answers for hostname in answer)


def registered_tasks(
    celery: Celery, hostnames: Sequence[str], timeout: float
) -> dict[str, list[str]]:
    """The task names each of ``hostnames`` registered (Celery's ``inspect registered``)."""
    answer = celery.control.inspect(destination=list(hostnames), timeout=timeout).registered()
    return {hostname: sorted(map(str, names)) for hostname, names in (answer or {}).items()}


def _source(variable: str, url: str, default: str) -> str:
    if os.environ.get(variable) and url == os.environ[variable]:
        return variable
    if url == default:
        return f"the default: {variable} is not set"
    return f"the configuration module {config_module()[0]}"


def _sources(broker_url: str, dead_letters_url: str) -> tuple[str, ...]:
    default = from_environment({})["broker_url"]
    source = _source("CELERY_BROKER_URL", broker_url, default)
    broker = f"the broker at {maybe_sanitize_url(broker_url)} ({source})"
    if os.environ.get("NOTIFIER_DEAD_LETTERS_URL") == dead_letters_url:
        where = "NOTIFIER_DEAD_LETTERS_URL"
    elif dead_letters_url == broker_url:
        where = "the broker: NOTIFIER_DEAD_LETTERS_URL is not set"
    else:
        where = f"the configuration module {config_module()[0]}"
    letters = f"the dead letters and the fleet at {maybe_sanitize_url(dead_letters_url)} ({where})"
    return broker, letters


def _committed_at(raw: bytes | None) -> float | None:
    # The message at the tail of the list is the oldest (kombu LPUSHes and BRPOPs): read as a
    # worker would read it (tasks/broker/taken.py). A batch's oldest is its first.
    if raw is None:
        return None
    message = Taken.parse(raw, "status").message
    messages = message if isinstance(message, list) else [message]
    times = [
        value
        for item in messages
        if isinstance(item, Mapping)
        for value in [item.get("committed_at")]
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    return float(min(times)) if times else None


def _queue_states(
    client: redis.Redis, names: Iterable[str], consumers: Mapping[str, list[str]]
) -> tuple[QueueState, ...]:
    names = sorted(set(names))
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
            pipe.lindex(name, -1)
        replies = pipe.execute()
    return tuple(
        QueueState(
            name,
            int(replies[2 * n]),
            _committed_at(replies[2 * n + 1]),
            tuple(sorted(consumers.get(name, []))),
        )
        for n, name in enumerate(names)
    )


def _workers(
    celery: Celery, answered: list[str], records: list[WorkerRecord], timeout: float
) -> tuple[list[WorkerState], list[str]]:
    announced = {record.hostname: record for record in records}
    notes = []
    unannounced = [hostname for hostname in answered if hostname not in announced]
    tasks: dict[str, list[str]] = {}
    if unannounced:
        try:
            tasks = registered_tasks(celery, unannounced, timeout)
        except (OSError, redis.RedisError, KombuError) as exc:
            notes.append(f"the tasks of {', '.join(unannounced)} could not be asked: {exc}")
    states = []
    for hostname in sorted({*answered, *announced}):
        record = announced.get(hostname)
        if record is not None:
            queues = tuple(sorted(record.queues))
            listeners = tuple(sorted(record.names))
        else:
            queues = ()
            listeners = tuple(
                name
                for name in tasks.get(hostname, [])
                if name != DISPATCH_TASK and not name.startswith("celery.")
            )
        states.append(
            WorkerState(hostname, hostname in answered, record is not None, queues, listeners)
        )
    return states, notes


def read(*, include: Sequence[str] = (), ping_timeout: float = 1.0) -> WorkerSide:
    """What the worker side knows now; :class:`Unreachable` when the broker's Redis or the dead
    letters' does not answer, :class:`~notifier.errors.NotifierError` for a bad setting or a
    broker that is not Redis."""
    settings = configure(app, registry)
    notes = []
    try:
        for module in include:
            importlib.import_module(module)
    except (ImportError, NotifierError) as exc:
        notes.append(f"the listeners of {', '.join(include)} cannot be loaded: {exc}")
    broker_url = str(app.conf.broker_url)
    masked_broker = maybe_sanitize_url(broker_url)
    if broker_url.split("://", 1)[0] not in _REDIS_SCHEMES or ";" in broker_url:
        raise NotifierError(f"status reads the queues of one Redis broker, not {masked_broker}")
    masked_letters = maybe_sanitize_url(settings.dead_letters_url)
    sources = _sources(broker_url, settings.dead_letters_url)
    broker = connect(redis_url(broker_url))
    letters_client = connect(settings.dead_letters_url)
    try:
        broker.ping()
    except (redis.RedisError, OSError) as exc:
        raise Unreachable(sources[0], exc) from None
    try:
        records = Fleet(letters_client).live()
        letters = Counter(letter.listener for letter in DeadLetters(letters_client))
    except (redis.RedisError, OSError) as exc:
        raise Unreachable(sources[1], exc) from None
    # One attempt per broker call: an answer or an error, not a command that hangs.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }
    try:
        answered = ping_workers(app, ping_timeout)
    except (OSError, redis.RedisError, KombuError) as exc:
        answered = []
        notes.append(f"the workers could not be pinged: {exc}")
    workers, more_notes = _workers(app, answered, records, ping_timeout)
    consumers: dict[str, list[str]] = {}
    for worker in workers:
        for queue in worker.queues:
            consumers.setdefault(queue, []).append(worker.hostname)
    names = [
        *settings.routing.queues,
        *(listener.queue for listener in registry),
        *(spec.queue for record in records for spec in record.listeners),
        *consumers,
    ]
    try:
        queues = _queue_states(broker, names, consumers)
    except (redis.RedisError, OSError) as exc:
        raise Unreachable(sources[0], exc) from None
    return WorkerSide(
        masked_broker,
        masked_letters,
        sources,
        queues,
        tuple(workers),
        tuple(
            LetterCount(listener, count)
            for listener, count in sorted(letters.items(), key=lambda item: item[0] or "")
        ),
        (*notes, *more_notes),
    )


def _age(now: float, committed_at: float | None) -> float | None:
    return None if committed_at is None else round(max(0.0, now - committed_at), 3)


def problems(side: WorkerSide, now: float, max_age: float) -> list[str]:
    """What in ``side`` needs a person (see docs/cli.md, "Exit status")."""
    found = []
    if not any(worker.answered for worker in side.workers):
        found.append("no worker answered the ping")
    for queue in side.queues:
        age = _age(now, queue.oldest_committed_at)
        if age is not None and queue.depth and age > max_age:
            found.append(
                f"queue {queue.name}: its oldest message was committed {age:.1f} s ago "
                f"(more than {max_age:g} s)"
            )
        if queue.depth and not queue.consumers:
            found.append(f"queue {queue.name}: {queue.depth} messages, and no live worker takes it")
    total = sum(letters.count for letters in side.dead_letters)
    if total:
        named = ", ".join(
            f"{letters.listener or 'malformed messages'}: {letters.count}"
            for letters in side.dead_letters
        )
        found.append(f"{total} dead letters held ({named}): `notifier dead-letters list`")
    return found


def report(
    now: float, max_age: float, *, include: Sequence[str] = (), ping_timeout: float = 1.0
) -> dict[str, Any]:
    """What the worker side knows, as JSON-ready data, with its ``problems`` and the
    ``sources`` of its URLs: what ``notifier status`` shows (it loads this module by name)."""
    side = read(include=include, ping_timeout=ping_timeout)
    queues = [
        {
            "name": queue.name,
            "depth": queue.depth,
            "oldest_committed_at": queue.oldest_committed_at,
            "oldest_age": _age(now, queue.oldest_committed_at) if queue.depth else None,
            "consumers": list(queue.consumers),
        }
        for queue in side.queues
    ]
    ages = [queue["oldest_age"] for queue in queues if queue["oldest_age"] is not None]
    return {
        "broker": side.broker_url,
        "dead_letters_url": side.dead_letters_url,
        "sources": list(side.sources),
        "queues": queues,
        "lag": max(ages) if ages else None,
        "workers": [
            {
                "hostname": worker.hostname,
                "answered": worker.answered,
                "announced": worker.announced,
                "queues": list(worker.queues),
                "listeners": list(worker.listeners),
            }
            for worker in side.workers
        ],
        "dead_letters": {
            "total": sum(letters.count for letters in side.dead_letters),
            "by_listener": [
                {"listener": letters.listener, "count": letters.count}
                for letters in side.dead_letters
            ],
        },
        "notes": list(side.notes),
        "problems": problems(side, now, max_age),
    }
