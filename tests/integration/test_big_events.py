"""An event of 100 000 records travels as bounded messages, and a worker takes them part by part."""

from __future__ import annotations

import time

import psutil
import redis

from notifier.events import AfterResourceChanged
from notifier.publisher import CeleryPublisher
from notifier.settings import parse_settings
from notifier.subscriber import Subscriber
from tests.support.processes import CeleryWorker, RedisServer, wait_until

RECORDS = 100_000
MAX_MESSAGE_SIZE = 262_144


def test_a_collection_of_100000_records_deleted_reaches_the_listener_in_bounded_parts(tmp_path):
    broker = RedisServer(tmp_path)
    worker = None
    try:
        client = redis.Redis.from_url(broker.url)
        settings = parse_settings({"notifier.broker_url": broker.url}, environ={})
        publisher = CeleryPublisher(broker.url, 5)
        records = [
            {"new": {"id": f"r{n}", "deleted": True}, "old": {"id": f"r{n}", "title": f"title {n}"}}
            for n in range(RECORDS)
        ]
        payload = {"resource_name": "collection_of_records", "action": "delete", "uri": "/c"}
        Subscriber(settings, publisher)(AfterResourceChanged(payload, records, None))
        publisher.close()

        queued = client.lrange("notifier", 0, -1)
        assert len(queued) > 1
        # Celery's envelope base64-encodes the body: 4/3 of the records' JSON, and the headers.
        assert max(len(message) for message in queued) < MAX_MESSAGE_SIZE * 4 / 3 + 16_384

        env = {
            "CELERY_BROKER_URL": broker.url,
            "NOTIFIER_LISTENERS": "tests.integration.crash_listeners",
        }
        worker = CeleryWorker(tmp_path, env)
        processes = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children()]
        peak = 0

        def all_counted() -> bool:
            nonlocal peak
            peak = max(peak, *(p.memory_info().rss for p in processes if p.is_running()))
            keys = list(client.scan_iter("crash:records:*"))
            return bool(keys) and int(client.get(keys[0])) == RECORDS

        started = time.monotonic()
        wait_until(all_counted, 120, f"the listener counting {RECORDS} deleted records")
        print(
            f"{len(queued)} messages; the listener had them all in "
            f"{time.monotonic() - started:.1f} s; peak RSS of a worker process "
            f"{peak / 2**20:.0f} MiB"
        )
        [parts_key] = client.scan_iter("crash:parts:*")
        assert sorted(client.lrange(parts_key, 0, -1)) == sorted(
            f"{n}/{len(queued)}".encode() for n in range(len(queued))
        )
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
