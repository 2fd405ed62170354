"""notifier status: what it shows of a known state, in JSON and text, and its exit status.

The broker, the dead letters and the fleet are one fake Redis; the workers' answers to the ping
are the test's; the time is fixed.
"""

import json

import fakeredis
import pytest
from celery import Celery

import tasks.status
from notifier.cli import status
from notifier.spool.file import SpoolFile
from notifier.wire.protocol import task_message
from notifier.wire.version import version
from tasks import defaults
from tasks.dead_letters import DeadLetters
from tasks.fleet import Fleet, WorkerRecord
from tasks.listeners.registry import Registry
from tests.unit.builders import message

NOW = 1_800_000_000.0


class Workers:
    """The workers that answer the ping: the test says which."""

    def __init__(self):
        self.answering = []

    def __call__(self, celery, timeout):
        return list(self.answering)


@pytest.fixture
def redis_client(monkeypatch):
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(tasks.status, "connect", lambda url: client)
    return client


@pytest.fixture
def workers(monkeypatch):
    workers = Workers()
    monkeypatch.setattr(tasks.status, "ping_workers", workers)
    return workers


@pytest.fixture(autouse=True)
def own_worker_app(monkeypatch):
    """A worker's app and registry of the test's own, configured from this environment (not
    from what another test configured the process's app with)."""
    monkeypatch.delenv("NOTIFIER_SPOOL_DIR")
    app = Celery("status-tests", set_as_current=False)
    app.config_from_object(defaults.Configuration())
    monkeypatch.setattr(tasks.status, "app", app)
    # The queues of the listeners this process knows are shown: none, here.
    monkeypatch.setattr(tasks.status, "registry", Registry(app))


def a_worker_lives(client, workers, hostname="w1@host", listeners=()):
    record = WorkerRecord(hostname, frozenset({"notifier"}), frozenset({"notifier"}), listeners)
    Fleet(client).announce(record)
    workers.answering.append(hostname)


def queue_messages(client, queue, committed_ats):
    for committed_at in committed_ats:
        data = message()
        if committed_at is not None:
            data["committed_at"] = committed_at
        client.lpush(queue, task_message("notifier.dispatch", data["event_id"], [data], queue))


def run(capsys, *argv):
    code = status.main(["--json", *argv], clock=lambda: NOW)
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_an_empty_pipeline_with_a_live_worker_is_healthy(capsys, redis_client, workers):
    a_worker_lives(redis_client, workers)

    code, shown, err = run(capsys)

    assert code == 0
    assert shown == {
        "version": version(),
        "checked_at": NOW,
        "healthy": True,
        "max_age": 60.0,
        "broker": "redis://localhost:6379/0",
        "dead_letters_url": "redis://localhost:6379/0",
        "queues": [
            {
                "name": "notifier",
                "depth": 0,
                "oldest_committed_at": None,
                "oldest_age": None,
                "consumers": ["w1@host"],
            }
        ],
        "lag": None,
        "workers": [
            {
                "hostname": "w1@host",
                "answered": True,
                "announced": True,
                "queues": ["notifier"],
                "listeners": [],
            }
        ],
        "dead_letters": {"total": 0, "by_listener": []},
        "notes": [],
        "spool": None,
        "outbox": None,
        "problems": [],
    }
    assert "the broker at redis://localhost:6379/0 (the default" in err


def test_old_messages_and_dead_letters_need_a_person(capsys, redis_client, workers):
    a_worker_lives(redis_client, workers)
    queue_messages(redis_client, "notifier", [NOW - 90, NOW - 30, NOW - 5])  # oldest first
    letters = DeadLetters(redis_client)
    for _ in range(2):
        letters.add("it failed", message(), listener="X", attempts=4, queue="notifier")

    code, shown, _ = run(capsys)

    assert code == 1
    assert shown["healthy"] is False
    assert shown["queues"] == [
        {
            "name": "notifier",
            "depth": 3,
            "oldest_committed_at": NOW - 90,
            "oldest_age": 90.0,
            "consumers": ["w1@host"],
        }
    ]
    assert shown["lag"] == 90.0
    assert shown["dead_letters"] == {"total": 2, "by_listener": [{"listener": "X", "count": 2}]}
    assert shown["problems"] == [
        "queue notifier: its oldest message was committed 90.0 s ago (more than 60 s)",
        "2 dead letters held (X: 2): `notifier dead-letters list`",
    ]


def test_a_larger_max_age_lets_the_same_queue_pass(capsys, redis_client, workers):
    a_worker_lives(redis_client, workers)
    queue_messages(redis_client, "notifier", [NOW - 90])

    code, shown, _ = run(capsys, "--max-age", "120")

    assert (code, shown["problems"]) == (0, [])


def test_a_message_without_committed_at_has_an_unknown_age(capsys, redis_client, workers):
    a_worker_lives(redis_client, workers)
    queue_messages(redis_client, "notifier", [None])

    code, shown, _ = run(capsys)

    assert code == 0
    assert shown["queues"][0]["depth"] == 1
    assert shown["queues"][0]["oldest_age"] is None
    assert shown["lag"] is None


def test_no_worker_answering_needs_a_person(capsys, redis_client, workers):
    queue_messages(redis_client, "notifier", [NOW - 1])

    code, shown, _ = run(capsys)

    assert code == 1
    assert shown["workers"] == []
    assert shown["problems"] == [
        "no worker answered the ping",
        "queue notifier: 1 messages, and no live worker takes it",
    ]


def test_the_queues_and_listeners_of_live_workers_are_shown(capsys, redis_client, workers):
    from tasks.fleet import ListenerSpec

    spec = ListenerSpec(
        "index", "listeners.index", "notifier.listener.index", frozenset({"article"}),
        frozenset({"create"}),
    )  # fmt: skip
    record = WorkerRecord(
        "w2@host",
        frozenset({"notifier", "notifier.listener.index"}),
        frozenset({"notifier"}),
        (spec,),
    )
    Fleet(redis_client).announce(record)
    workers.answering.append("w2@host")

    code, shown, _ = run(capsys)

    assert code == 0
    assert [queue["name"] for queue in shown["queues"]] == ["notifier", "notifier.listener.index"]
    assert shown["workers"][0]["listeners"] == ["index"]


def test_an_unreachable_broker_is_one_line_that_masks_the_password(capsys, monkeypatch):
    # Nothing listens on port 1: the connection is refused at once.
    monkeypatch.setitem(tasks.status.app.conf, "broker_url", "redis://:secret@127.0.0.1:1/0")

    code = status.main([], clock=lambda: NOW)

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("notifier status: error: the broker at redis://:**@127.0.0.1:1/0 ")
    assert "secret" not in err
    assert err.count("\n") == 1


def test_the_spool_s_old_messages_need_a_person(capsys, redis_client, workers, tmp_path):
    a_worker_lives(redis_client, workers)
    spool = tmp_path / "spool"
    spool.mkdir()
    SpoolFile(spool / "spool-notifier-host-1-a.sqlite3").append_all([])
    from notifier.wire.message import decode

    data = {**message(), "committed_at": NOW - 300}
    spool_file = SpoolFile(spool / "spool-notifier-host-2-b.sqlite3")
    spool_file.append(decode(data), "notifier")

    code, shown, _ = run(capsys, "--spool-dir", str(spool))

    assert code == 1
    assert shown["spool"]["messages"] == 1
    assert shown["spool"]["files"][1]["held"] is False
    assert len(shown["problems"]) == 1
    assert shown["problems"][0].startswith("spool file spool-notifier-host-2-b.sqlite3: ")


def test_the_outbox_s_backlog_is_shown(capsys, redis_client, workers, tmp_path):
    from notifier.outbox.table import create_table

    a_worker_lives(redis_client, workers)
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    create_table(url)

    code, shown, _ = run(capsys, "--outbox-url", url)

    assert code == 0
    assert shown["outbox"] == {"url": url, "messages": 0, "oldest_age": None}


def test_the_text_names_every_problem(capsys, redis_client, workers):
    DeadLetters(redis_client).add("it failed", message(), listener="X")

    code = status.main([], clock=lambda: NOW)

    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith(f"notifier {version()}: NOT HEALTHY\n")
    assert "  - no worker answered the ping" in out
    assert "  - 1 dead letters held (X: 1): `notifier dead-letters list`" in out
