"""Dead letters end to end: a real worker keeps what it cannot read, and notifier-dead-letters
replays and purges them.

Malformed messages are pushed into the session worker's ``notifier`` queue the ways an operator
or a foreign client would: with redis-cli, and with Celery or kombu speaking something else.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable

import kombu
import pytest
import redis
from celery import Celery

from notifier.wire.message import DISPATCH_TASK, encode
from tasks.dead_letters import DeadLetter, DeadLetters
from tests.support.processes import RedisServer, dead_letters_command, wait_until

#: The key that tells tests/integration/listeners.py's fail_until_fixed to stop failing.
FIXED_KEY = "listeners:fail_until_fixed:fixed"
FLAKY_LISTENER = "tests.integration.listeners.fail_until_fixed"


@pytest.fixture(autouse=True)
def leave_the_dead_letters_as_they_were(redis_client):
    """The session's store is shared: the letters a test of this module makes are removed after
    it, so that other modules' tests read only theirs."""
    store = DeadLetters(redis_client)
    before = {letter.id for letter in store}
    yield
    for letter in store:
        if letter.id not in before:
            store.remove(letter.id)


def kept(redis_client: redis.Redis, marker: str, count: int = 1) -> list[DeadLetter]:
    """The dead letters whose message holds ``marker``, once there are ``count`` of them."""
    store = DeadLetters(redis_client)

    def letters() -> list[DeadLetter]:
        return [letter for letter in store if marker in json.dumps(letter.message)]

    wait_until(lambda: len(letters()) >= count, 10, f"{count} dead letters about {marker}")
    return letters()


def create_article(web, title: str) -> None:
    request = urllib.request.Request(
        f"{web.url}/articles",
        data=json.dumps({"title": title}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def test_garbage_pushed_into_a_queue_is_kept_and_the_worker_keeps_delivering(
    web, worker, received, redis_client, redis_server
):
    marker = uuid.uuid4().hex
    redis_client.lpush("notifier", f"not json at all {marker}")
    sender = Celery("sender", broker=redis_server.url, set_as_current=False)
    sender.send_task(
        DISPATCH_TASK, args=[marker], task_id=marker, serializer="pickle", queue="notifier"
    )
    sender.close()

    letters = kept(redis_client, marker, count=2)
    [garbage] = [letter for letter in letters if isinstance(letter.message, str)]
    [pickled] = [letter for letter in letters if letter is not garbage]

    assert garbage.reason == (
        "queue 'notifier': not a Celery message: "
        "not JSON (Expecting value: line 1 column 1 (char 0))"
    )
    assert garbage.message == f"not json at all {marker}"
    assert garbage.queue == "notifier"
    assert garbage.listener is None
    assert pickled.reason == (
        "queue 'notifier': an invalid task message: ContentDisallowed: Refusing to deserialize "
        "untrusted content of type pickle (application/x-python-serialize)"
    )
    assert pickled.message["headers"]["id"] == marker
    assert pickled.message["content_type"] == "application/x-python-serialize"
    assert worker.alive()
    title = f"After the garbage {marker[:8]}"
    create_article(web, title)
    received.wait_for("record_articles", title)
    assert "Unrecoverable error" not in worker.output()
    assert f"Connected to redis://:**@127.0.0.1:{redis_server.port}/0" in worker.output()


def publish(redis_server: RedisServer, body: object, headers: dict, **options: object) -> None:
    """Publish a task message by hand: JSON, unless ``options`` say otherwise."""
    with kombu.Connection(redis_server.url) as connection:
        connection.Producer().publish(
            body,
            routing_key="notifier",
            headers=headers,
            retry=False,
            **{"serializer": "json", **options},
        )


Push = Callable[[redis.Redis, RedisServer, str], None]

MALFORMED: dict[str, tuple[Push, str]] = {
    "json-but-no-envelope": (
        lambda client, server, marker: client.lpush("notifier", json.dumps([marker])),
        "queue 'notifier': not a Celery message: JSON, but not a kombu envelope "
        "(TypeError: list indices must be integers or slices, not str)",
    ),
    "unknown-task": (
        lambda client, server, marker: publish(
            server, [[marker], {}, {}], {"task": "no.such.task", "id": marker}
        ),
        "queue 'notifier': a message for task 'no.such.task', which this worker does not have",
    ),
    "no-task-named": (
        lambda client, server, marker: publish(server, {"colour": marker}, {}),
        "queue 'notifier': not a task message (it names no task)",
    ),
    "undecodable-body": (
        lambda client, server, marker: publish(
            server,
            b"\xff" + marker.encode(),
            {"task": DISPATCH_TASK, "id": marker},
            content_type="application/json",
            content_encoding="utf-8",
        ),
        "queue 'notifier': a body that cannot be decoded (application/json): DecodeError: "
        "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
    ),
    "body-not-args-kwargs-embed": (
        lambda client, server, marker: publish(
            server, f"just a string {marker}", {"task": DISPATCH_TASK, "id": marker}
        ),
        "queue 'notifier': a task message Celery cannot read: "
        "ValueError: too many values to unpack (expected 3)",
    ),
    "no-task-id": (
        lambda client, server, marker: publish(server, [[marker], {}, {}], {"task": DISPATCH_TASK}),
        "queue 'notifier': a task message Celery cannot read: KeyError: 'id'",
    ),
}


@pytest.mark.parametrize(("push", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_a_message_celery_cannot_read_is_kept_with_what_was_wrong(
    worker, redis_client, redis_server, push, reason
):
    marker = uuid.uuid4().hex

    push(redis_client, redis_server, marker)

    [letter] = kept(redis_client, marker)
    assert letter.reason == reason
    assert letter.queue == "notifier"
    assert worker.alive()
    # Acknowledged: nothing of it is left to be delivered again.
    wait_until(lambda: redis_client.hlen("unacked") == 0, 5, "no message left unacknowledged")
    assert marker not in json.dumps(redis_client.lrange("notifier", 0, -1))


@pytest.fixture
def flaky_listener_fixed(redis_client):
    """Call it to fix fail_until_fixed; it is broken again after the test."""
    redis_client.delete(FIXED_KEY)
    yield lambda: redis_client.set(FIXED_KEY, "1")
    redis_client.delete(FIXED_KEY)


def test_a_failed_listeners_letter_replayed_after_the_fix_reaches_that_listener_only(
    worker, received, redis_client, redis_server, deployment_env, flaky_listener_fixed
):
    payload = {"resource_name": "flaky", "action": "create", "uri": "/flakies"}
    message = encode(payload, [{"new": {"id": "f1"}}], [0], request_id=uuid.uuid4().hex)
    sender = Celery("sender", broker=redis_server.url, set_as_current=False)
    sender.send_task(DISPATCH_TASK, args=[message.as_dict()], queue="notifier")
    sender.close()
    [letter] = kept(redis_client, message.event_id)
    assert letter.listener == FLAKY_LISTENER
    assert letter.reason.startswith("RuntimeError: not fixed yet")
    assert letter.attempts == 1
    assert letter.queue == f"notifier.listener.{FLAKY_LISTENER}"
    assert "Traceback" in letter.traceback
    wait_until(lambda: received.by("record_flaky"), 10, "record_flaky getting the event")

    flaky_listener_fixed()
    done = dead_letters_command(
        {**deployment_env, "NOTIFIER_LISTENERS": "tests.integration.listeners"},
        "replay",
        letter.id,
    )

    assert done.returncode == 0, done.stderr
    queue = f"notifier.listener.{FLAKY_LISTENER}"
    assert done.stdout.splitlines() == [
        f"{letter.id}  sent to listener {FLAKY_LISTENER} (queue {queue})",
        "Replayed 1 dead letter: sent, and removed from the dead letters.",
    ]
    wait_until(lambda: received.by("fail_until_fixed"), 10, "the fixed listener getting the event")
    [replayed] = received.by("fail_until_fixed")
    assert replayed["event_id"] == message.event_id
    assert replayed["impacted_records"] == [{"new": {"id": "f1"}}]
    assert DeadLetters(redis_client).get(letter.id) is None
    # Only the listener that failed ran again: the other one got the event once.
    [once] = [
        event for event in received.by("record_flaky") if event["event_id"] == message.event_id
    ]
    assert once["event_id"] == message.event_id


def test_replaying_to_a_listener_no_module_names_is_refused_and_the_letter_stays(
    worker, redis_client, deployment_env
):
    letter = DeadLetters(redis_client).add("boom", {"event_id": "e"}, listener="gone.listener")

    done = dead_letters_command({**deployment_env, "NOTIFIER_LISTENERS": ""}, "replay", letter.id)

    assert done.returncode == 2
    assert "no listener gone.listener here" in done.stderr
    assert DeadLetters(redis_client).get(letter.id) == letter


def test_list_show_and_purge_all_on_a_store_of_its_own(tmp_path):
    server = RedisServer(tmp_path)
    try:
        env = {"CELERY_BROKER_URL": server.url, "NOTIFIER_DEAD_LETTERS_URL": server.url}
        store = DeadLetters(redis.Redis.from_url(server.url))
        letters = [
            store.add(f"RuntimeError: failure {n}", {"n": n}, listener="search.index", attempts=3)
            for n in range(3)
        ]

        listed = dead_letters_command(env, "list", script=True)
        shown = dead_letters_command(env, "show", letters[1].id, script=True)
        purged = dead_letters_command(env, "purge", "--all", script=True)

        assert listed.returncode == 0, listed.stderr
        assert [line.split()[0] for line in listed.stdout.splitlines()[1:4]] == [
            letter.id for letter in letters
        ]
        assert json.loads(shown.stdout)["reason"] == "RuntimeError: failure 1"
        assert json.loads(shown.stdout)["attempts"] == 3
        assert (purged.returncode, purged.stdout) == (0, "Purged 3 dead letters; none are left.\n")
        assert len(store) == 0
        assert dead_letters_command(env, "list", script=True).stdout == "No dead letters.\n"
    finally:
        server.stop()
