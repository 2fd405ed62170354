"""Workers killed at any instant, main process and pool at once, while events flow: every event
reaches every listener that wants it, and what a dead worker held comes again (duplicates,
counted and bounded).

Two workers consume the events; one of them is SIGKILLed (its pool with it, as a lost machine
would be) at a random, seeded moment, replaced, and killed again, ``KILLS`` times. Events are
published at a steady pace with the web side's publisher, half of them for one listener alone
(which dispatch runs itself, tasks/dispatch/inline.py), half for three (one task each). Once the
queues and kombu's ``unacked`` hash are empty, each listener's count of every event is read.

``NOTIFIER_DEATHS_KILLS`` and ``NOTIFIER_DEATHS_SEED`` change the run;
``NOTIFIER_DEATHS_TRACE=1`` records every broker command and says, for each message lost, where
its trail ended (tests/integration/broker_trace.py).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

from notifier.publisher import CeleryPublisher
from notifier.wire.message import encode
from tasks.dead_letters import DeadLetters
from tests.integration.broker_trace import Monitor, history, where_lost
from tests.integration.conftest import own_redis_server
from tests.integration.death_listeners import LISTENERS, RECEIVED
from tests.support.processes import CeleryWorker, RedisServer

KILLS = int(os.environ.get("NOTIFIER_DEATHS_KILLS", "24"))
SEED = int(os.environ.get("NOTIFIER_DEATHS_SEED", "11"))
TRACE = os.environ.get("NOTIFIER_DEATHS_TRACE") == "1"
LISTENER_MODULE = "tests.integration.death_listeners"
VISIBILITY_TIMEOUT = 5  # seconds: a dead worker's messages come back within seconds
PACE = 0.04  # seconds between two events published
#: How long after it is ready a worker is killed, at most (seconds).
LIFETIME = 2.5
#: How many deliveries of one message to one listener a run may show: each kill redelivers
#: what the worker held (what Celery prefetched, what dispatch took behind its own), and a
#: message may be held by two workers that die one after the other. In all, a listener
#: receives at most one duplicate per kill: at this pace, a worker holds about one message of
#: each listener.
MOST_DELIVERIES = 3


@dataclass
class Report:
    published: dict[str, list[str]] = field(
        default_factory=lambda: {kind: [] for kind in LISTENERS}
    )
    kills: list[float] = field(default_factory=list)  # when (time.time())
    lost: dict[str, list[str]] = field(default_factory=dict)  # listener -> event ids
    duplicated: dict[str, int] = field(default_factory=dict)  # listener -> extra deliveries
    most: dict[str, int] = field(default_factory=dict)  # listener -> most deliveries of one
    dead_letters: int = 0
    left: dict[str, int] = field(default_factory=dict)  # what the broker still holds
    seconds: float = 0.0

    def summary(self) -> str:
        published = {kind: len(ids) for kind, ids in self.published.items()}
        lost = {name: len(ids) for name, ids in self.lost.items()}
        return (
            f"{len(self.kills)} kills in {self.seconds:.0f} s; published {published}; "
            f"lost {lost}; duplicated {self.duplicated}; most deliveries {self.most}; "
            f"dead letters {self.dead_letters}; left in the broker {self.left}"
        )


class Publishing(threading.Thread):
    """The web side's publisher, one event every ``PACE`` seconds, until stopped."""

    def __init__(self, url: str, report: Report) -> None:
        super().__init__(name="publishing", daemon=True)
        self.publisher = CeleryPublisher(url, 0.5)
        self.report = report
        self.stopping = threading.Event()

    def run(self) -> None:
        kinds = list(LISTENERS)
        count = 0
        next_at = time.monotonic()
        while not self.stopping.is_set():
            kind = kinds[count % len(kinds)]
            message = encode({"resource_name": kind, "action": "create"}, [{"new": {}}], [0], "r")
            self.publisher.publish(message, "notifier")
            self.report.published[kind].append(message.event_id)
            count += 1
            next_at += PACE
            self.stopping.wait(max(0.0, next_at - time.monotonic()))
        self.publisher.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


def held(client: redis.Redis) -> dict[str, int]:
    """What the broker holds: each queue's items, and kombu's unacknowledged messages."""
    left = {}
    for key in client.scan_iter(count=1000):
        if client.type(key) == b"list":
            left[key.decode(errors="replace")] = int(client.llen(key))
    for key in ("unacked", "unacked_index"):
        if count := int(client.hlen(key) if key == "unacked" else client.zcard(key)):
            left[key] = count
    return left


def wait_until_settled(client: redis.Redis, report: Report, timeout: float) -> dict[str, int]:
    """Wait until every event reached its listeners and the broker holds nothing, twice in a
    row a second apart (a duplicate may come after the last first delivery); or ``timeout``."""
    deadline = time.monotonic() + timeout
    quiet = 0
    left = held(client)
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(1)
        left = held(client)
        quiet = quiet + 1 if not left and not any(count_lost(client, report).values()) else 0
    return left


def count_lost(client: redis.Redis, report: Report) -> dict[str, list[str]]:
    lost = {}
    for kind, names in LISTENERS.items():
        for name in names:
            received = client.hgetall(RECEIVED.format(name))
            lost[name] = [e for e in report.published[kind] if e.encode() not in received]
    return lost


def run(directory: Path, server: RedisServer, kills: int, seed: int) -> Report:
    report = Report()
    chance = random.Random(seed)
    env = {
        "CELERY_BROKER_URL": server.url,
        "NOTIFIER_LISTENERS": LISTENER_MODULE,
        "NOTIFIER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }
    client = redis.Redis.from_url(server.url)
    started = time.monotonic()
    steady = CeleryWorker(directory, env, name="steady")
    victim = CeleryWorker(directory, env, name="victim0")
    publishing = Publishing(server.url, report)
    publishing.start()
    try:
        for number in range(1, kills + 1):
            time.sleep(chance.uniform(0, LIFETIME))
            victim.kill()
            report.kills.append(time.time())
            victim.stop()  # closes its log
            victim = CeleryWorker(directory, env, name=f"victim{number}")
        time.sleep(chance.uniform(0, LIFETIME))
        publishing.stop()
        report.left = wait_until_settled(client, report, VISIBILITY_TIMEOUT * 12)
    finally:
        publishing.stop()
        victim.stop()
        steady.stop()
    report.seconds = time.monotonic() - started
    report.lost = count_lost(client, report)
    for names in LISTENERS.values():
        for name in names:
            counts = Counter(
                {key.decode(): int(n) for key, n in client.hgetall(RECEIVED.format(name)).items()}
            )
            report.duplicated[name] = sum(n - 1 for n in counts.values())
            report.most[name] = max(counts.values(), default=0)
    report.dead_letters = len(DeadLetters(client))
    return report


def explain(report: Report, trace: Path, logs: Path) -> None:
    """Print, for each message lost, its trail in the broker and the workers that logged it."""
    for name, event_ids in report.lost.items():
        for event_id in event_ids:
            print(f"--- {name} lost {event_id}")
            listener_task = f"{event_id}:{LISTENER_MODULE}.{name}"  # tasks/listeners/batch.py
            for task, key in ((event_id, None), (listener_task, RECEIVED.format(name))):
                steps = history(trace, task, key)
                for step in steps:
                    before = [kill - step.time for kill in report.kills if kill >= step.time]
                    when = f"{min(before):.3f} s before a kill" if before else "after the kills"
                    print(
                        f"  {task}: {step.time:.3f} {step.client} {step.what} {step.detail} "
                        f"({when})"
                    )
                if steps:
                    print(f"  {task}: {where_lost(steps)}")
            for log in sorted(logs.glob("*.log")):
                if log == trace:
                    continue
                for line in log.read_text(errors="replace").splitlines():
                    if event_id in line and "received" in line.lower():
                        print(f"  {log.name}: {line[:200]}")


def test_workers_killed_at_any_instant_lose_no_event(tmp_path: Path) -> None:
    server = own_redis_server(tmp_path)
    monitor = Monitor(server.port, tmp_path / "monitor.log") if TRACE else None
    try:
        report = run(tmp_path, server, KILLS, SEED)
    finally:
        if monitor is not None:
            monitor.stop()
        server.stop()
    print(report.summary())
    if monitor is not None:
        explain(report, monitor.path, tmp_path)

    assert len(report.kills) >= KILLS
    assert report.left == {}
    assert {name: ids for name, ids in report.lost.items() if ids} == {}
    assert max(report.most.values()) <= MOST_DELIVERIES
    assert max(report.duplicated.values()) <= len(report.kills)
    assert report.dead_letters == 0
