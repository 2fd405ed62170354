"""tasks.broker.consumer: what a worker cannot read is kept as a dead letter, with what was wrong.

The BRPOP check runs on a channel object built without a connection: it needs none to read a
reply. The consumer's Celery hooks are exercised by tests/integration/test_dead_letters.py, on a
real worker.
"""

import base64
import importlib
import json
import logging

import fakeredis
import pytest
import redis
from kombu.transport.redis import Channel as KombuChannel

from tasks.dead_letters import DeadLetters

consumer = importlib.import_module("tasks.broker.consumer")


@pytest.fixture
def store():
    return DeadLetters(fakeredis.FakeRedis())


@pytest.fixture
def channel(store):
    # Only what reading a BRPOP reply uses: no connection, no pool.
    checking = consumer.checking_channel(consumer._CheckingChannel, lambda: store)
    channel = checking.__new__(checking)
    channel.global_keyprefix = ""
    channel.sep = KombuChannel.sep
    return channel


def envelope(body=b"[[], {}, {}]", headers=None, **changes):
    data = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "notifier.dispatch", "id": "t1"} if headers is None else headers,
        "properties": {
            "delivery_tag": "tag-1",
            "body_encoding": "base64",
            "delivery_info": {"exchange": "notifier", "routing_key": "notifier"},
        },
        **changes,
    }
    return json.dumps(data).encode()


def test_a_kombu_message_passes_the_brpop_check_unchanged(channel, store):
    reply = [b"notifier", envelope()]

    assert channel._checked_reply(reply) == (b"notifier", envelope())
    assert len(store) == 0


def test_a_brpop_that_timed_out_stays_a_timeout(channel, store):
    assert channel._checked_reply(None) is None
    assert len(store) == 0


def test_a_queue_item_that_is_not_json_is_kept_and_skipped(channel, store):
    assert channel._checked_reply([b"notifier", b"not json at all"]) is None

    (letter,) = store
    assert letter.reason == (
        "queue 'notifier': not a Celery message: "
        "not JSON (Expecting value: line 1 column 1 (char 0))"
    )
    assert letter.message == "not json at all"
    assert letter.queue == "notifier"
    assert letter.listener is None


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (b"[1, 2]", "TypeError: list indices must be integers or slices, not str"),
        (b'{"body": "e30="}', "KeyError: 'properties'"),
        (envelope(headers=[1]), "AttributeError: 'list' object has no attribute 'get'"),
    ],
    ids=["a-list", "no-properties", "headers-not-an-object"],
)
def test_json_that_is_no_kombu_envelope_is_kept_and_skipped(channel, store, item, error):
    assert channel._checked_reply([b"notifier", item]) is None

    (letter,) = store
    assert letter.reason == (
        f"queue 'notifier': not a Celery message: JSON, but not a kombu envelope ({error})"
    )
    assert letter.message == json.loads(item)


def test_the_queue_of_a_priority_list_or_a_prefixed_key_is_its_name(channel, store):
    channel.global_keyprefix = "app:"

    channel._checked_reply([b"app:articles" + KombuChannel.sep.encode() + b"3", b"garbage"])

    assert store.get(next(iter(store)).id).queue == "articles"


def test_bytes_that_are_not_text_are_kept_as_their_repr(channel, store):
    channel._checked_reply([b"notifier", b"\x80\x04\x95pickle"])

    (letter,) = store
    assert letter.message == repr(b"\x80\x04\x95pickle")


def test_a_kept_message_is_logged_with_its_dead_letter(store, caplog):
    with caplog.at_level(logging.ERROR, logger="notifier"):
        consumer.dead_letter(store, "queue 'notifier': a reason", "item", queue="notifier")

    (letter,) = store
    assert f"queue 'notifier': a reason; kept as dead letter {letter.id}" in caplog.text


class UnreachableStore:
    def add(self, *args, **kwargs):
        raise redis.ConnectionError("Connection refused")


def test_a_message_that_cannot_be_kept_is_logged_whole(caplog):
    with caplog.at_level(logging.ERROR, logger="notifier"):
        consumer.dead_letter(
            UnreachableStore(), "queue 'notifier': a reason", "the item", queue="notifier"
        )

    assert "could not be kept as a dead letter, dropped: 'the item'" in caplog.text


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b"plain text", "plain text"),
        ("already text", "already text"),
        (b"\xff\xfe", repr(b"\xff\xfe")),
        (None, None),
    ],
)
def test_a_body_is_shown_as_json_text_or_bytes(body, shown):
    assert consumer.readable(body) == shown


def test_workers_use_the_consumer_that_keeps_malformed_messages():
    from tasks.app import app

    assert app.conf.worker_consumer == "tasks.broker.consumer:Consumer"
