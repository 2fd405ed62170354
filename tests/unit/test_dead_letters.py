"""tasks.dead_letters: the store keeps each letter whole, by id, in the order they failed.

The store lives in fakeredis; the tests also read the Redis keys the way an operator would with
redis-cli.
"""

import json

import fakeredis
import pytest
from celery import signals

from tasks.dead_letters import DeadLetter, DeadLetters
from tasks.dispatch.delivery import Delivery
from tasks.dispatch.run import DispatchRun
from tasks.wiring import bind, collaborators
from tests.unit.builders import message


@pytest.fixture
def store(client):
    return DeadLetters(client)


def test_a_letter_is_kept_whole_and_found_by_its_id(store):
    added = store.add(
        "RuntimeError: the index is locked",
        {"event_id": "e1"},
        listener="search.index",
        attempts=3,
        queue="notifier.listener.search.index",
        traceback="Traceback (most recent call last): ...",
    )

    found = store.get(added.id)

    assert found == added
    assert found.listener == "search.index"
    assert found.attempts == 3
    assert found.queue == "notifier.listener.search.index"
    assert found.message == {"event_id": "e1"}


def test_an_id_that_is_no_letter_finds_nothing(store):
    store.add("reason", {})

    assert store.get("0" * 32) is None
    assert "0" * 32 not in store


def test_letters_are_listed_oldest_first(store):
    ids = [store.add(f"reason {n}", {"n": n}).id for n in range(5)]

    assert [letter.id for letter in store] == ids
    assert len(store) == 5
    assert all(letter_id in store for letter_id in ids)


def test_more_letters_than_one_batch_are_all_listed(store):
    ids = [store.add("reason", n).id for n in range(250)]

    assert [letter.id for letter in store] == ids


def test_a_letter_removed_while_the_others_are_read_is_left_out(store, client):
    kept = store.add("kept", {})
    gone = store.add("gone", {})
    client.hdel("notifier:dead_letters:letters", gone.id)  # its id is still in the order

    assert list(store) == [kept]


def test_a_removed_letter_is_gone_from_both_keys(store, client):
    kept = store.add("kept", {})
    removed = store.add("removed", {})

    assert store.remove(removed.id) is True

    assert store.get(removed.id) is None
    assert [letter.id for letter in store] == [kept.id]
    assert client.zrange("notifier:dead_letters:order", 0, -1) == [kept.id.encode()]
    assert client.hkeys("notifier:dead_letters:letters") == [kept.id.encode()]


def test_removing_a_letter_twice_says_it_was_not_there(store):
    letter = store.add("reason", {})
    store.remove(letter.id)

    assert store.remove(letter.id) is False


def test_purge_removes_every_letter_and_says_how_many(store, client):
    for n in range(3):
        store.add("reason", n)

    assert store.purge() == 3

    assert len(store) == 0
    assert list(store) == []
    assert client.exists("notifier:dead_letters:letters", "notifier:dead_letters:order") == 0
    assert store.purge() == 0


def test_the_layout_reads_with_redis_cli_commands(store, client):
    letter = store.add("unknown schema version 2", {"version": 2})

    (letter_id,) = client.zrange("notifier:dead_letters:order", 0, -1, withscores=True)
    raw = client.hget("notifier:dead_letters:letters", letter.id)

    assert letter_id == (letter.id.encode(), letter.failed_at)
    assert json.loads(raw) == {
        "id": letter.id,
        "failed_at": letter.failed_at,
        "listener": None,
        "attempts": None,
        "queue": None,
        "reason": "unknown schema version 2",
        "traceback": None,
        "message": {"version": 2},
    }


def test_what_json_cannot_hold_is_kept_as_its_repr(store):
    letter = store.add("a message is a JSON object, not bytes", b"\x80\x04pickle")

    assert store.get(letter.id).message == repr(b"\x80\x04pickle")


def test_a_letter_written_by_an_older_version_reads_with_what_it_has(store, client):
    old = {"id": "abc", "reason": "r", "message": 1, "listener": None, "traceback": None}
    client.hset("notifier:dead_letters:letters", "abc", json.dumps({**old, "failed_at": 5.0}))
    client.zadd("notifier:dead_letters:order", {"abc": 5.0})

    assert store.get("abc") == DeadLetter(id="abc", failed_at=5.0, reason="r", message=1)


def test_a_client_that_decodes_responses_reads_the_same_letters():
    client = fakeredis.FakeRedis(decode_responses=True)
    store = DeadLetters(client)
    letter = store.add("reason", {"a": 1}, listener="l")

    assert list(store) == [letter]
    assert store.get(letter.id) == letter


def test_another_key_keeps_another_store(client):
    one, other = DeadLetters(client), DeadLetters(client, key="elsewhere")
    one.add("reason", {})

    assert len(other) == 0
    assert other.letters_key == "elsewhere:letters"


# What dispatch writes.


@pytest.fixture
def wired_store(registry, store, order_guard):
    """A worker of the test's registry whose dead letters are ``store``."""
    bind(registry.app, collaborators(registry, store, order_guard))
    return store


def ignore(event):
    return event


def test_a_listener_that_failed_for_good_is_kept_with_its_attempts_and_queue(registry, wired_store):
    store = wired_store
    registry.listener("article", name="search.index", queue="indexing")(ignore)
    task = registry["search.index"].task
    data = message()
    task.push_request(retries=2, delivery_info={"routing_key": "indexing"})
    try:
        signals.task_failure.send(
            sender=task,
            task_id=f"{data['event_id']}:search.index",
            exception=TimeoutError("the index is locked"),
            args=[data],
            kwargs={},
            einfo="Traceback (most recent call last): ...",
        )
    finally:
        task.pop_request()

    (letter,) = store
    assert letter.listener == "search.index"
    assert letter.attempts == 3
    assert letter.queue == "indexing"
    assert letter.message == data


def test_a_malformed_message_is_kept_with_the_queue_it_came_from(registry, store):
    DispatchRun(registry, store, "articles").handle(Delivery({"version": 2}))

    (letter,) = store
    assert letter.queue == "articles"
    assert letter.listener is None
    assert letter.attempts is None
