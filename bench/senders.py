"""The event the sections publish, and what publishes it: notifier's subscriber (the web side's
path, the spool as its fallback), and a Celery client that sends tasks by name."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from celery import Celery

from bench.measure import RECORD
from notifier.publisher import CeleryPublisher
from notifier.settings import parse_settings
from notifier.spool import Spool
from notifier.subscriber import Subscriber

PAYLOAD = {
    "timestamp": 1795509277828,
    "action": "create",
    "uri": "/buckets/blog/collections/posts/records/9d6c3b8e-5b1c-4c8e-9a39-6f0d3b2a1c4e",
    "user_id": "basicauth:0951e7b33b51f8890818e0052453adcfa5b19290b43e93024aa6cdbef679b7cf",
    "resource_name": "record",
    "bucket_id": "blog",
    "collection_id": "posts",
    "record_id": RECORD["id"],
}


def event(resource_name: str = "record", records: int = 1) -> SimpleNamespace:
    """A committed event as notifier's subscriber receives it (no request: no Pyramid)."""
    impacted = [{"new": {**RECORD, "id": f"{RECORD['id']}-{n}"}} for n in range(records)]
    return SimpleNamespace(
        payload={**PAYLOAD, "resource_name": resource_name},
        impacted_records=impacted,
        positions=list(range(records)),
        request=None,
    )


def subscriber(broker_url: str, directory: Path) -> Subscriber:
    settings = parse_settings(
        {"notifier.broker_url": broker_url, "notifier.spool_dir": str(directory / "spool")}
    )
    publisher = CeleryPublisher(broker_url, settings.publish_timeout)
    return Subscriber(settings, publisher, Spool(settings.spool_dir, publisher.publish))


def celery_sender(broker_url: str) -> Celery:
    """A Celery client as an application would set one up to send tasks by name."""
    app = Celery("bench", broker=broker_url, set_as_current=False)
    app.conf.update(broker_write_url=broker_url, task_serializer="json")
    return app
