"""The publisher: sends messages to the broker as Celery tasks, by name.

The web side never imports the worker's code: it only knows the dispatch task's name. What it
writes is what Celery's own ``send_task`` writes (:mod:`notifier.wire.protocol`), so a stock
``celery worker`` consumes it.
"""

from __future__ import annotations

import time

import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from notifier.metrics import WebMetrics, web_metrics
from notifier.wire.message import DISPATCH_TASK, Message
from notifier.wire.protocol import direct_redis_url, published, task_message

__all__ = ["CeleryPublisher"]


class CeleryPublisher:
    """Publishes each message as one ``notifier.dispatch`` task message on a queue.

    On a Redis broker whose URL redis-py reads as kombu does
    (:func:`~notifier.wire.protocol.direct_redis_url`) it writes the task message straight into
    the queue's Redis list (see :func:`~notifier.wire.protocol.task_message`), with one LPUSH on
    a connection it keeps for the next message: it skips kombu, which costs several times more
    per message (a Redis client built per publish, ``argsrepr``, base64; see
    bench/README.md). Other brokers (``rediss://``, a URL with a query, Sentinel,
    ``memory://``) go through Celery, as does a URL redis-py cannot set up a connection with.

    Every broker operation is bounded by ``timeout`` seconds (connect and socket), and nothing is
    retried, so a write request never waits long for an absent or hung broker.

    Each publish is counted and timed in ``metrics`` (default: the process's,
    :func:`~notifier.metrics.web_metrics`), whoever asked for it: a request, the spool, the
    outbox.
    """

    def __init__(self, broker_url: str, timeout: float, metrics: WebMetrics | None = None) -> None:
        self.broker_url = broker_url
        self.metrics = metrics if metrics is not None else web_metrics()
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
        started = time.perf_counter()
        try:
            self._publish(message, queue)
        except Exception as exc:
            self.metrics.publish_failed(queue, exc, time.perf_counter() - started)
            raise
        self.metrics.published(queue, time.perf_counter() - started)

    def _publish(self, message: Message, queue: str) -> None:
        if self.client is not None:
            task = task_message(DISPATCH_TASK, message.task_id, [message.as_dict()], queue)
            self.client.lpush(queue, task)
            published(task)
            return
        self.app.send_task(
            DISPATCH_TASK,
            args=[message.as_dict()],
            queue=queue,
            task_id=message.task_id,
            retry=False,
        )

    def ping(self) -> None:
        """Check that the broker answers, within the timeout; raise what it raised."""
        if self.client is not None:
            self.client.ping()
            return
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client.connection_pool.disconnect()
        else:
            self.app.close()
