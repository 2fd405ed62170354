"""The publisher: sends messages to the broker as Celery tasks, by name.

The web side never imports the worker's code: it only knows the dispatch task's name. What it
writes is what Celery's own ``send_task`` writes, so a stock ``celery worker`` consumes it.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from redis.backoff import NoBackoff
from redis.retry import Retry

from notifier.wire.message import DISPATCH_TASK, Message

__all__ = ["CeleryPublisher", "direct_redis_url", "redis_url", "task_message"]

#: What Celery 5's ``send_task`` puts in every task message besides the task's name and id (task
#: protocol 2): no eta, no expiry, no group, no time limits, no parent, and ``ignore_result``
#: None: the worker uses the task's own setting (``task_ignore_result``).
_HEADERS: dict[str, object] = {
    "lang": "py",
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "timelimit": [None, None],
    "parent_id": None,
    "kwargsrepr": "{}",
    "ignore_result": None,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}
# The body's third element: no callbacks, errbacks, chain or chord.
_EMBED: dict[str, object] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = anon_nodename()  # what Celery's client names itself: gen<pid>@<host>
# The parts of the envelope that never change, encoded once: a message encodes only its own.
_SAME_HEADERS = json.dumps({**_HEADERS, "origin": _ORIGIN})[1:-1]


def task_message(task: str, task_id: str, args: list[object], queue: str) -> str:
    """The JSON that kombu's Redis transport keeps in a queue's list for the Celery task
    ``task`` sent with ``args`` to ``queue``, as ``send_task(task, args, queue=queue)`` would.

    Unlike Celery, the body is not base64-encoded (kombu's ``body_encoding`` is optional: a
    1 KB message stays about 1 KB instead of becoming 2.7 KB); the exchange is the default one,
    so that the message is restored to ``queue`` by name after a worker died holding it; and
    ``argsrepr`` names the message instead of repeating it (a worker's log shows it).
    """
    body = json.dumps([args, {}, _EMBED], separators=(",", ":"))
    task_id = json.dumps(task_id)
    headers = (
        f'{{{_SAME_HEADERS}, "task": {json.dumps(task)}, "id": {task_id}, '
        f'"root_id": {task_id}, "argsrepr": {json.dumps(_argsrepr(args))}}}'
    )
    properties = (
        f'{{"correlation_id": {task_id}, "reply_to": "", "delivery_mode": 2, '
        f'"delivery_info": {{"exchange": "", "routing_key": {json.dumps(queue)}}}, '
        f'"priority": 0, "delivery_tag": "{uuid.uuid4().hex}"}}'
    )
    # The body, the largest part, is encoded once and escaped once (not parsed again).
    return (
        f'{{"body":{json.dumps(body)},"content-encoding":"utf-8",'
        f'"content-type":"application/json","headers":{headers},"properties":{properties}}}'
    )


def _argsrepr(args: list[object]) -> str:
    # Celery's repr of a 1 KB message costs more than sending it, and floods the worker's log.
    message = args[0] if len(args) == 1 else None
    if isinstance(message, dict) and "event_id" in message:
        return (
            f"[<message {message['event_id']}: {message.get('action')} "
            f"{message.get('resource_name')}, part {message.get('part', 0)}>]"
        )
    if isinstance(message, list) and message and isinstance(message[0], dict):
        return f"[<{len(message)} messages, from {message[0].get('event_id')}>]"
    return f"[<{len(args)} arguments>]"


def direct_redis_url(broker_url: str) -> str | None:
    """The redis-py URL of a kombu broker URL that redis-py connects to as kombu does, or None:
    a plain ``redis://`` or ``redis+socket://`` URL without a query. A query means something
    else to each (kombu reads ``ssl_cert_reqs=CERT_REQUIRED``, which redis-py refuses, and
    takes a socket URL's query as its own options); TLS, Sentinel and failover URLs are left
    to kombu."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "redis+socket") or parts.query or ";" in broker_url:
        return None
    return redis_url(broker_url)


def redis_url(broker_url: str) -> str:
    """The redis-py URL of a kombu Redis broker URL (``redis+socket://`` is ``unix://``)."""
    parts = urlsplit(broker_url)
    if parts.scheme == "redis+socket":
        return urlunsplit(("unix", *parts[1:]))
    return broker_url


class CeleryPublisher:
    """Publishes each message as one ``notifier.dispatch`` task message on a queue.

    On a Redis broker whose URL redis-py reads as kombu does (:func:`direct_redis_url`) it
    writes the task message straight into the queue's Redis list (see :func:`task_message`),
    with one LPUSH on a connection it keeps for the next message: it skips kombu, which costs
    several times more per message (a Redis client built per publish, ``argsrepr``, base64; see
    the README's "Performance"). Other brokers (``rediss://``, a URL with a query, Sentinel,
    ``memory://``) go through Celery, as does a URL redis-py cannot set up a connection with.

    Every broker operation is bounded by ``timeout`` seconds (connect and socket), and nothing is
    retried, so a write request never waits long for an absent or hung broker.
    """

    def __init__(self, broker_url: str, timeout: float) -> None:
        self.broker_url = broker_url
        self.client: redis.Redis | None = None
        direct = direct_redis_url(broker_url)
        try:
            pool = redis.ConnectionPool.from_url(direct) if direct is not None else None
        except (ValueError, TypeError):
            pool = None  # what redis-py cannot read, kombu may
        if pool is not None:
            pool.connection_kwargs.update(
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry_on_timeout=False,
                # redis-py tries a failed command 3 more times by default: each would wait again.
                retry=Retry(NoBackoff(), 0),
            )
            self.client = redis.Redis(connection_pool=pool)
            return
        self.app = Celery("notifier", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            # Celery's broker_url prefers $CELERY_BROKER_URL to the URL it is given; the write
            # URL is what publishing uses, and it keeps the URL notifier's settings chose.
            broker_write_url=broker_url,
            task_serializer="json",
            accept_content=["json"],
            broker_connection_timeout=timeout,
            broker_connection_retry=False,
            broker_transport_options={
                # kombu otherwise retries a refused connection for about 2 s before raising.
                "max_retries": 0,
                "socket_connect_timeout": timeout,
                "socket_timeout": timeout,
                "retry_on_timeout": False,
            },
        )

    def publish(self, message: Message, queue: str) -> None:
        """Send ``message`` to ``queue``; raise whatever the broker (or JSON) raised."""
        if self.client is not None:
            task = task_message(DISPATCH_TASK, message.task_id, [message.as_dict()], queue)
            self.client.lpush(queue, task)
            return
        self.app.send_task(
            DISPATCH_TASK,
            args=[message.as_dict()],
            queue=queue,
            task_id=message.task_id,
            retry=False,
        )

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client.connection_pool.disconnect()
        else:
            self.app.close()
