"""Keep the messages a worker holds from being handed out again while it lives.

With the Redis transport, a message a worker took and has not acknowledged yet stays in Redis
(the ``unacked`` hash, indexed by time in ``unacked_index``); any worker hands it out again once
it is older than the visibility timeout. A short timeout brings the messages of a worker that
died (SIGKILL, a lost machine) back within seconds, but would also hand out the message of a
listener still running, or of a retry waiting for its time. So every worker refreshes, every
third of the timeout, the time of each message it holds: only a dead worker's messages age.

Relied on, checked on kombu 5.7.0 (``kombu/transport/virtual/base.py`` and
``kombu/transport/redis.py``): ``QoS._delivered``, the delivery tags of the messages a channel
took and has not acknowledged, and the ``unacked_index`` sorted set, each tag scored by the time
it was taken, which kombu's sweep (``restore_visible``) reads. On a Celery or kombu whose
internals were not checked (:func:`tasks.broker.internals_checked`) nothing is refreshed: a
message held longer than the visibility timeout is handed out again, as with Celery alone.

Beside the other internals notifier relies on: docs/internals.md,
"Messages a living worker holds stay its own".
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import bootsteps

from tasks.broker.versions import internals_checked

__all__ = ["KeepDeliveriesVisible"]

logger = logging.getLogger("notifier")


class KeepDeliveriesVisible(bootsteps.StartStopStep):
    """A consumer step: refresh the unacknowledged messages this worker holds."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.timer: Any = None

    def start(self, consumer: Any) -> None:
        if not internals_checked():
            return
        options = consumer.app.conf.broker_transport_options or {}
        timeout = float(options.get("visibility_timeout", 3600))
        self.timer = consumer.timer.call_repeatedly(timeout / 3, self.refresh, (consumer,))

    def stop(self, consumer: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    shutdown = stop

    @staticmethod
    def refresh(consumer: Any) -> None:
        channel = consumer.task_consumer.channel
        qos = channel.qos
        # kombu 5.7.0 keeps the messages a channel took and has not acknowledged in
        # QoS._delivered (a dict: delivery tag -> message).
        tags = list(qos._delivered)
        if not tags or not hasattr(qos, "unacked_index_key"):
            return
        now = time.time()
        try:
            with channel.conn_or_acquire() as client:
                # XX: only messages still held; an acknowledged one must not come back.
                client.zadd(qos.unacked_index_key, dict.fromkeys(tags, now), xx=True)
        except Exception:  # the broker is away: the next refresh will do
            logger.warning("could not refresh %d messages this worker holds", len(tags))
