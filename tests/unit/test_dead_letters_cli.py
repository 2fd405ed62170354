"""notifier-dead-letters: what each command prints, sends and removes, and its exit status.

main(argv) runs against a store in fakeredis and a registry of the test's own; the listener
tasks' and dispatch's sends are recorded instead of reaching a broker.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import fakeredis
import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from notifier.wire.routing import RoutingTable
from tasks.app import app
from tasks.dead_letters import DeadLetters, cli
from tasks.listeners.registry import Registry
from tasks.settings import configure
from tests.unit.builders import message

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(monkeypatch):
    store = DeadLetters(fakeredis.FakeRedis())
    monkeypatch.setattr(cli, "open_store", lambda: store)
    return store


@pytest.fixture
def registry(monkeypatch):
    registry = Registry(Celery("cli-tests", broker="memory://", set_as_current=False))
    monkeypatch.setattr(cli, "registry", registry)
    return registry


class Sent:
    """Stands in for apply_async of the tasks it watches: keeps what would have been sent."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.sent = []

    def watch(self, task, fail_with=None):
        def apply_async(args=None, kwargs=None, **options):
            if fail_with is not None:
                raise fail_with
            self.sent.append({"task": task.name, "args": list(args), **options})

        self.monkeypatch.setattr(task, "apply_async", apply_async)

    @property
    def tasks(self):
        return [sent["task"] for sent in self.sent]


@pytest.fixture
def sent(monkeypatch):
    recorder = Sent(monkeypatch)
    recorder.watch(cli.dispatch)
    return recorder


def ignore(event):
    return event


READING = "notifier-dead-letters: the dead letters at "


def run(capsys, *argv):
    """The command's status, output and errors, less the line that says what Redis it reads."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    if err.startswith(READING):
        err = err.partition("\n")[2]
    return status, out, err


# every command


@pytest.mark.parametrize(
    ("environ", "source"),
    [
        ({"NOTIFIER_DEAD_LETTERS_URL": "redis://letters:6379/3"}, "(NOTIFIER_DEAD_LETTERS_URL)"),
        ({"CELERY_BROKER_URL": "redis://broker:6379/0"}, "(the broker, CELERY_BROKER_URL)"),
        ({}, "(the broker: neither NOTIFIER_DEAD_LETTERS_URL nor CELERY_BROKER_URL is set)"),
    ],
    ids=["dead-letters-url", "broker-url", "neither"],
)
def test_each_command_first_says_which_redis_it_reads_and_why(
    monkeypatch, store, capsys, environ, source
):
    for name in ("NOTIFIER_DEAD_LETTERS_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    url = environ.get("NOTIFIER_DEAD_LETTERS_URL") or environ.get("CELERY_BROKER_URL")
    monkeypatch.setitem(app.conf, "notifier_dead_letters_url", url or "redis://localhost:6379/0")

    cli.main(["list"])

    err = capsys.readouterr().err
    assert err == f"{READING}{url or 'redis://localhost:6379/0'} {source}\n"


def test_version_says_the_version_of_notifier(capsys):
    assert cli.main(["--version"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("notifier-dead-letters ")
    assert out.split()[1][0].isdigit()


# list


def test_list_json_is_an_array_of_the_letters_each_whole(store, capsys):
    letter = store.add("RuntimeError: boom", message(), listener="search.index", attempts=3)

    status, out, _ = run(capsys, "list", "--json")

    assert status == 0
    [listed] = json.loads(out)
    assert (listed["id"], listed["listener"], listed["attempts"]) == (letter.id, "search.index", 3)
    assert listed["message"] == letter.message
    assert run(capsys, "purge", "--all")[0] == 0
    assert json.loads(run(capsys, "list", "--json")[1]) == []


def test_list_says_when_there_are_no_dead_letters(store, capsys):
    assert run(capsys, "list") == (0, "No dead letters.\n", "")


def test_list_shows_one_line_per_letter_with_id_time_listener_and_reason(store, capsys):
    failed = store.add(
        "RuntimeError: the index is locked\nand more",
        message(),
        listener="search.index",
        traceback="Traceback...",
    )
    malformed = store.add("unknown schema version 2: this worker reads version 1", {})

    status, out, err = run(capsys, "list")

    assert status == 0
    assert err == ""
    header, first, second, blank, footer = out.splitlines()
    assert header.split() == ["ID", "FAILED", "(UTC)", "LISTENER", "REASON"]
    assert first.split(maxsplit=4) == [
        failed.id,
        *failed.failed_at_datetime.strftime("%Y-%m-%d %H:%M:%S").split(),
        "search.index",
        "RuntimeError: the index is locked",
    ]
    assert second.split(maxsplit=4)[0] == malformed.id
    assert second.split(maxsplit=4)[3:] == [
        "-",
        "unknown schema version 2: this worker reads version 1",
    ]
    column = header.index("LISTENER")
    assert first[column:].startswith("search.index  ")
    assert second[column:].startswith("-             unknown")
    assert blank == ""
    assert footer.startswith("2 dead letters, oldest first.")


def test_list_cuts_a_long_reason(store, capsys):
    store.add("x" * 300, {})

    _, out, _ = run(capsys, "list")

    row = out.splitlines()[1]
    assert row.endswith("x" * 97 + "...")


def test_list_says_one_dead_letter_in_the_singular(store, capsys):
    store.add("reason", {})

    _, out, _ = run(capsys, "list")

    assert out.splitlines()[-1].startswith("1 dead letter, oldest first.")


# show


def test_show_prints_the_whole_letter_as_indented_json(store, capsys):
    data = message()
    letter = store.add(
        "RuntimeError: boom",
        data,
        listener="search.index",
        attempts=3,
        queue="notifier.listener.search.index",
        traceback="Traceback (most recent call last):\n  ...\nRuntimeError: boom\n",
    )

    status, out, err = run(capsys, "show", letter.id)

    assert status == 0
    assert err == ""
    assert out.startswith('{\n  "id": ')
    assert json.loads(out) == {
        "id": letter.id,
        "failed_at": letter.failed_at_datetime.isoformat(timespec="seconds"),
        "listener": "search.index",
        "attempts": 3,
        "queue": "notifier.listener.search.index",
        "reason": "RuntimeError: boom",
        "traceback": "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n",
        "message": data,
    }


def test_show_of_an_unknown_id_is_an_error_with_status_2(store, capsys):
    status, out, err = run(capsys, "show", "nosuchid")

    assert status == 2
    assert out == ""
    assert err.startswith("notifier-dead-letters: error: no dead letter with id nosuchid")
    assert "list` shows the ids" in err


def test_show_without_an_id_is_a_usage_error(store, capsys):
    status, _, err = run(capsys, "show")

    assert status == 2
    assert "the following arguments are required: ID" in err


def test_no_command_at_all_is_a_usage_error(store, capsys):
    status, _, err = run(capsys)

    assert status == 2
    assert err.startswith("usage: notifier-dead-letters")


def test_help_ends_with_status_0(store, capsys):
    status, out, _ = run(capsys, "--help")

    assert status == 0
    assert "replay" in out
    assert "NOTIFIER_DEAD_LETTERS_URL" in out


# replay


def test_replay_sends_the_message_to_that_one_listener_and_removes_the_letter(
    store, registry, sent, capsys
):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    sent.watch(registry["search.index"].task)
    sent.watch(registry["mail.new_article"].task)
    data = message()
    letter = store.add("RuntimeError: boom", data, listener="search.index", attempts=1)
    other = store.add("RuntimeError: other", data, listener="mail.new_article")

    status, out, err = run(capsys, "replay", letter.id)

    assert status == 0, err
    assert sent.sent == [
        {
            "task": "search.index",
            "args": [data],
            "queue": "notifier.listener.search.index",
            "task_id": f"{data['event_id']}:search.index",
            "retry": False,
        }
    ]
    assert store.get(letter.id) is None
    assert [remaining.id for remaining in store] == [other.id]
    assert out.splitlines() == [
        f"{letter.id}  sent to listener search.index (queue notifier.listener.search.index)",
        "Replayed 1 dead letter: sent, and removed from the dead letters.",
    ]


def test_replay_of_a_part_of_an_event_names_the_part_in_the_task_id(store, registry, sent, capsys):
    registry.listener("article", name="search.index")(ignore)
    sent.watch(registry["search.index"].task)
    data = {**message(), "part": 1, "parts": 3}
    letter = store.add("boom", data, listener="search.index")

    run(capsys, "replay", letter.id)

    assert sent.sent[0]["task_id"] == f"{data['event_id']}.1:search.index"


def test_replay_sends_a_task_listener_to_its_own_queue(store, registry, sent, capsys):
    registry.listener("article", name="search.index", queue="indexing")(ignore)
    sent.watch(registry["search.index"].task)
    letter = store.add("boom", message(), listener="search.index")

    run(capsys, "replay", letter.id)

    assert sent.sent[0]["queue"] == "indexing"


def test_replay_sends_a_letter_for_no_listener_to_dispatch_on_the_routed_queue(
    store, registry, sent, capsys, monkeypatch
):
    routing = RoutingTable.parse("article.*=articles")
    settings = dataclasses.replace(configure(app, registry), routing=routing)
    monkeypatch.setattr(app, "notifier_settings", settings, raising=False)
    data = {**message(), "version": 2}
    letter = store.add("unknown schema version 2: this worker reads version 1", data)

    status, out, _ = run(capsys, "replay", letter.id)

    assert status == 0
    assert sent.sent == [
        {
            "task": "notifier.dispatch",
            "args": [data],
            "queue": "articles",
            "task_id": None,
            "retry": False,
        }
    ]
    assert "sent to dispatch (queue articles)" in out
    assert len(store) == 0


def test_replay_sends_garbage_back_to_dispatch_on_the_queue_it_came_from(
    store, registry, sent, capsys
):
    letter = store.add("queue 'updates': not a Celery message", "not json", queue="updates")

    assert run(capsys, "replay", letter.id)[0] == 0

    assert sent.sent[0]["queue"] == "updates"
    assert sent.sent[0]["args"] == ["not json"]


def test_replay_for_a_listener_this_process_does_not_know_is_an_error_and_nothing_is_sent(
    store, registry, sent, capsys
):
    registry.listener("article", name="search.index")(ignore)
    sent.watch(registry["search.index"].task)
    known = store.add("boom", message(), listener="search.index")
    unknown = store.add("boom", message(), listener="gone.listener")

    status, out, err = run(capsys, "replay", known.id, unknown.id)

    assert status == 2
    assert out == ""
    assert "no listener gone.listener here" in err
    assert unknown.id in err
    assert "NOTIFIER_LISTENERS" in err
    assert "listeners known: search.index" in err
    assert "nothing was replayed" in err
    assert sent.sent == []
    assert len(store) == 2


def test_replay_of_an_unknown_id_is_an_error_and_nothing_is_sent(store, registry, sent, capsys):
    registry.listener("article", name="search.index")(ignore)
    sent.watch(registry["search.index"].task)
    known = store.add("boom", message(), listener="search.index")

    status, _, err = run(capsys, "replay", known.id, "nosuchid")

    assert status == 2
    assert "no dead letter with id nosuchid" in err
    assert sent.sent == []
    assert known.id in store


def test_replay_stops_when_the_broker_fails_and_keeps_the_letters_not_sent(
    store, registry, sent, capsys
):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    sent.watch(registry["search.index"].task)
    sent.watch(registry["mail.new_article"].task, fail_with=OperationalError("Connection refused"))
    first = store.add("boom", message(), listener="search.index")
    second = store.add("boom", message(), listener="mail.new_article")

    status, out, err = run(capsys, "replay", first.id, second.id)

    assert status == 1
    assert f"{first.id}  sent to listener search.index" in out
    assert f"the broker did not take dead letter {second.id}: Connection refused" in err
    assert "1 dead letter replayed" in err
    assert [letter.id for letter in store] == [second.id]


def test_replay_with_a_listener_module_that_cannot_be_imported_is_an_error(
    store, registry, sent, capsys
):
    letter = store.add("boom", message(), listener="search.index")

    status, _, err = run(capsys, "replay", "--include", "no_such_listeners", letter.id)

    assert status == 2
    assert "the listeners cannot be loaded: No module named 'no_such_listeners'" in err
    assert letter.id in store


def test_replay_without_an_id_is_a_usage_error(store, capsys):
    assert run(capsys, "replay")[0] == 2


# purge


def test_purge_removes_the_letters_named_and_no_other(store, capsys):
    first, second, third = (store.add("reason", n) for n in range(3))

    status, out, _ = run(capsys, "purge", first.id, third.id)

    assert status == 0
    assert out == "Purged 2 dead letters.\n"
    assert [letter.id for letter in store] == [second.id]


def test_purge_of_an_unknown_id_is_an_error_and_removes_nothing(store, capsys):
    letter = store.add("reason", {})

    status, _, err = run(capsys, "purge", letter.id, "nosuchid")

    assert status == 2
    assert "no dead letter with id nosuchid" in err
    assert "nothing was done" in err
    assert letter.id in store


def test_purge_all_empties_the_store(store, capsys):
    for n in range(3):
        store.add("reason", n)

    assert run(capsys, "purge", "--all") == (0, "Purged 3 dead letters; none are left.\n", "")
    assert len(store) == 0
    assert run(capsys, "purge", "--all") == (0, "There were no dead letters.\n", "")


@pytest.mark.parametrize("argv", [["purge"], ["purge", "--all", "someid"]], ids=["none", "both"])
def test_purge_needs_ids_or_all_but_not_both(store, capsys, argv):
    status, _, err = run(capsys, *argv)

    assert status == 2
    assert "--all" in err


# where the letters are


def test_a_store_that_cannot_be_reached_is_an_error_with_status_1_and_no_password(
    capsys, monkeypatch
):
    monkeypatch.setitem(app.conf, "notifier_dead_letters_url", "redis://:secret@127.0.0.1:1/0")

    status, out, err = run(capsys, "list")

    assert status == 1
    assert out == ""
    assert "the dead letters at redis://:**@127.0.0.1:1/0 cannot be read or written" in err
    assert "secret" not in err


def test_python_dash_m_runs_the_same_command():
    env = {
        **os.environ,
        "NOTIFIER_DEAD_LETTERS_URL": "redis://127.0.0.1:1/0",
        "PYTHONWARNINGS": "error",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tasks.dead_letters", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    reading, error = done.stderr.splitlines()[:2]
    assert reading == f"{READING}redis://127.0.0.1:1/0 (NOTIFIER_DEAD_LETTERS_URL)"
    assert error.startswith("notifier-dead-letters: error: the dead letters at redis://")
