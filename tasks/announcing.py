"""A worker announces its listeners to the fleet while it lives (tasks/fleet.py), and says
what it finds: a consumer step of every worker (added in tasks/startup.py)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis
from celery import bootsteps

from tasks.app import registry as worker_registry
from tasks.fleet import FLEET_TTL, Fleet, WorkerRecord, record_of, report
from tasks.settings import configured

__all__ = ["AnnounceListeners", "Announcer"]

logger = logging.getLogger("notifier")


class Announcer:
    """Announces one worker's record to the fleet, and logs what :func:`report` finds, each
    line once while it holds."""

    def __init__(self, fleet: Fleet, record: WorkerRecord) -> None:
        self.fleet = fleet
        self.record = record
        self.reported: set[str] = set()

    def announce(self) -> None:
        try:
            self.fleet.announce(self.record)
            live = self.fleet.live()
        except (redis.RedisError, OSError) as exc:
            logger.warning(
                "could not announce this worker's listeners to the fleet (%s): the other "
                "workers do not hand it the events of listeners they lack",
                exc,
            )
            return
        lines = report(self.record, live)
        for level, line in lines:
            if line not in self.reported:
                logger.log(level, "%s", line)
        self.reported = {line for _, line in lines}

    def leave(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):  # else its record expires
            self.fleet.leave(self.record.hostname)


class AnnounceListeners(bootsteps.StartStopStep):
    """A consumer step: announce this worker's listeners to the fleet while it lives."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.timer: Any = None
        self.announcer: Announcer | None = None

    def start(self, consumer: Any) -> None:
        settings = configured(consumer.app)  # as the worker's start checked them
        consumed = [queue.name for queue in consumer.task_consumer.queues]
        record = record_of(
            consumer.hostname,
            consumed,
            worker_registry,
            settings.routing.queues,
            only_dispatches=settings.dispatch_only,
        )
        # Started again after a lost broker connection: the same fleet, the queues of now.
        if self.announcer is None:
            self.announcer = Announcer(Fleet.from_url(settings.dead_letters_url), record)
        else:
            self.announcer.record = record
        self.announcer.announce()
        self.timer = consumer.timer.call_repeatedly(FLEET_TTL / 3, self.announcer.announce)

    def stop(self, consumer: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def shutdown(self, consumer: Any) -> None:
        self.stop(consumer)
        if self.announcer is not None:
            self.announcer.leave()
