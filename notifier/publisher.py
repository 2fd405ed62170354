"""The publisher: sends messages to the broker as Celery tasks, by name.

The web side never imports the worker's code: it only knows the dispatch task's name.
"""

from __future__ import annotations

from celery import Celery

from notifier.message import DISPATCH_TASK, Message

__all__ = ["CeleryPublisher"]


class CeleryPublisher:
    """Publishes each message as one ``notifier.dispatch`` task message on a queue.

    Every broker operation is bounded by ``timeout`` seconds (connect and socket), and nothing is
    retried, so a write request never waits long for an absent or hung broker.
    """

    def __init__(self, broker_url: str, timeout: float) -> None:
        self.broker_url = broker_url
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
        """Send ``message`` to ``queue``; raise whatever the broker raised."""
        self.app.send_task(
            DISPATCH_TASK,
            args=[message.as_dict()],
            queue=queue,
            task_id=message.task_id,
            retry=False,
        )

    def close(self) -> None:
        self.app.close()
