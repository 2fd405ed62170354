"""notifier.publisher.CeleryPublisher: the message a worker gets, on Celery's in-memory broker and
on Redis (fakeredis; a real worker consumes it in tests/integration), and the bounds on a broker
that does not answer."""

import json
import socket
import time

import fakeredis
import pytest
import redis
from celery import signals
from kombu.exceptions import EncodeError
from kombu.transport.redis import Channel
from kombu.transport.virtual import Message as kombu_message

from notifier.publisher import CeleryPublisher
from notifier.wire.message import DISPATCH_TASK, decode, encode
from notifier.wire.protocol import task_message


@pytest.fixture
def publisher():
    publisher = CeleryPublisher("memory://", timeout=0.5)
    yield publisher
    publisher.close()


def message(record=None):
    payload = {"resource_name": "article", "action": "create", "uri": "/articles"}
    return encode(payload, [{"new": record or {"id": "a1"}}], [0], request_id="req-1")


def take(publisher, queue):
    # The connection the publisher wrote with, whatever the environment says.
    with publisher.app.connection_for_write() as connection:
        simple_queue = connection.SimpleQueue(queue)
        try:
            received = simple_queue.get(timeout=1)
            received.ack()
            return received
        finally:
            simple_queue.close()


def test_a_message_is_sent_as_the_dispatch_task_on_its_queue(publisher):
    sent = message()

    publisher.publish(sent, "articles")

    received = take(publisher, "articles")
    assert received.headers["task"] == DISPATCH_TASK == "notifier.dispatch"
    assert received.headers["id"] == sent.event_id
    assert received.delivery_info["routing_key"] == "articles"
    args, kwargs, _ = received.payload
    assert kwargs == {}
    assert decode(args[0]) == sent


def test_messages_are_sent_as_json_only(publisher):
    publisher.publish(message(), "notifier")

    assert take(publisher, "notifier").content_type == "application/json"
    assert publisher.app.conf.accept_content == ["json"]


def test_a_message_that_is_not_json_raises_for_the_subscriber_to_log(publisher):
    with pytest.raises(EncodeError):
        publisher.publish(message({"id": "a1", "when": object()}), "notifier")


@pytest.fixture
def refusing_broker_url():
    """A local port where nothing listens: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def hung_broker_url():
    """A local port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


@pytest.mark.parametrize("broker", ["refusing_broker_url", "hung_broker_url"])
def test_an_absent_or_hung_broker_fails_the_publish_within_the_timeout(request, broker):
    publisher = CeleryPublisher(request.getfixturevalue(broker), timeout=0.25)
    started = time.monotonic()
    try:
        with pytest.raises(redis.RedisError):
            publisher.publish(message(), "notifier")
    finally:
        publisher.close()

    assert time.monotonic() - started < 2


def test_the_broker_url_given_wins_over_celery_broker_url_in_the_environment(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    publisher = CeleryPublisher("memory://", timeout=0.5)
    try:
        publisher.publish(message(), "articles")

        assert decode(take(publisher, "articles").payload[0][0]).event_id
    finally:
        publisher.close()


@pytest.fixture
def redis_publisher():
    publisher = CeleryPublisher("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens there
    publisher.client = fakeredis.FakeRedis()
    yield publisher
    publisher.close()


def received_from_redis(publisher, queue):
    """The message a worker's kombu Redis channel would deliver from ``queue``."""
    [item] = publisher.client.lrange(queue, 0, -1)
    return kombu_message(json.loads(item), channel=_BodyDecoder())


class _BodyDecoder:
    """What kombu's Message asks of a Redis channel: to decode a body."""

    codecs = Channel.codecs
    decode_body = Channel.decode_body


def test_on_redis_a_message_is_pushed_as_the_dispatch_task_celery_would_send(redis_publisher):
    sent = message({"id": "a1", "title": "Brokers"})

    redis_publisher.publish(sent, "articles")

    received = received_from_redis(redis_publisher, "articles")
    assert received.headers["task"] == DISPATCH_TASK
    assert received.headers["id"] == received.headers["root_id"] == sent.task_id
    assert received.headers["retries"] == 0
    assert received.headers["eta"] is None
    assert received.properties["priority"] == 0
    assert received.delivery_info == {"exchange": "", "routing_key": "articles"}
    assert received.content_type == "application/json"
    args, kwargs, embed = json.loads(received.body)
    assert (decode(args[0]), kwargs) == (sent, {})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_on_redis_the_body_is_not_base64_and_the_log_names_the_event_and_its_records(
    redis_publisher,
):
    sent = message({"id": "a1", "title": "x" * 1000})

    redis_publisher.publish(sent, "notifier")

    [item] = redis_publisher.client.lrange("notifier", 0, -1)
    envelope = json.loads(item)
    assert "body_encoding" not in envelope["properties"]
    assert json.loads(envelope["body"])[0] == [sent.as_dict()]
    assert envelope["headers"]["argsrepr"] == (
        f"[<message {sent.event_id}: create article /articles (a1), part 0>]"
    )


def test_on_redis_each_message_gets_a_delivery_tag_of_its_own(redis_publisher):
    redis_publisher.publish(message(), "notifier")
    redis_publisher.publish(message(), "notifier")

    tags = {
        json.loads(item)["properties"]["delivery_tag"]
        for item in redis_publisher.client.lrange("notifier", 0, -1)
    }
    assert len(tags) == 2


def test_on_redis_a_message_that_is_not_json_raises_for_the_subscriber_to_log(redis_publisher):
    with pytest.raises(TypeError):
        redis_publisher.publish(message({"id": "a1", "when": object()}), "notifier")

    assert redis_publisher.client.llen("notifier") == 0


def test_on_redis_the_headers_are_those_celery_s_send_task_writes(publisher):
    sent = message()
    publisher.publish(sent, "notifier")  # on Celery's in-memory broker: Celery's send_task
    celery_headers = take(publisher, "notifier").headers

    ours = json.loads(task_message(DISPATCH_TASK, sent.task_id, [sent.as_dict()], "notifier"))

    # argsrepr names the message instead of repeating it; nothing else differs.
    del celery_headers["argsrepr"], ours["headers"]["argsrepr"]
    assert ours["headers"] == celery_headers
    assert ours["headers"]["ignore_result"] is None  # the task's own setting applies


@pytest.mark.parametrize(
    "url",
    [
        "rediss://127.0.0.1:1/0?ssl_cert_reqs=CERT_REQUIRED",  # kombu's form, refused by redis-py
        "redis://127.0.0.1:1/0?ssl_cert_reqs=required",
        "redis+socket:///tmp/redis.sock?virtual_host=2",
    ],
    ids=["rediss", "redis-query", "socket-query"],
)
def test_a_broker_url_redis_py_does_not_read_as_kombu_does_is_published_through_celery(
    monkeypatch, url
):
    publisher = CeleryPublisher(url, timeout=0.5)
    sent = []
    monkeypatch.setattr(publisher.app, "send_task", lambda *args, **options: sent.append(options))

    publisher.publish(message(), "notifier")

    assert publisher.client is None
    assert [options["queue"] for options in sent] == ["notifier"]


def test_a_broker_url_redis_py_cannot_set_up_is_published_through_celery(monkeypatch):
    def cannot(url):
        raise ValueError("Redis URL must specify one of the following schemes")

    monkeypatch.setattr(redis.ConnectionPool, "from_url", cannot)

    publisher = CeleryPublisher("redis://127.0.0.1:1/0", timeout=0.5)

    assert publisher.client is None


# Celery's publish signals, on the Redis path that writes without Celery -----------------------


@pytest.fixture
def publish_signals():
    """What before_task_publish and after_task_publish receivers were given, in order; the
    before receiver adds a header, as OpenTelemetry's Celery instrumentation adds its context."""
    seen = []

    def before(sender=None, headers=None, **kwargs):
        seen.append(("before", sender, dict(headers), kwargs))
        headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def after(sender=None, headers=None, **kwargs):
        seen.append(("after", sender, dict(headers), kwargs))

    signals.before_task_publish.connect(before, weak=False)
    signals.after_task_publish.connect(after, weak=False)
    yield seen
    signals.before_task_publish.disconnect(before)
    signals.after_task_publish.disconnect(after)


def test_on_redis_publish_signals_are_sent_as_send_task_sends_them(
    redis_publisher, publish_signals
):
    sent = message()

    redis_publisher.publish(sent, "notifier")

    [(_, before_sender, before_headers, before), (_, after_sender, after_headers, after)] = (
        publish_signals
    )
    assert before_sender == after_sender == DISPATCH_TASK
    assert (before_headers["id"], before_headers["root_id"]) == (sent.task_id, sent.task_id)
    assert before["routing_key"] == after["routing_key"] == "notifier"
    assert before["body"][0] == [sent.as_dict()] == list(after["body"][0])
    assert before["properties"]["delivery_info"] == {"exchange": "", "routing_key": "notifier"}
    # What the before receiver added is in the message a worker takes, and in what after saw.
    delivered = received_from_redis(redis_publisher, "notifier")
    assert delivered.headers["traceparent"] == after_headers["traceparent"]
    assert decode(delivered.decode()[0][0]) == decode(sent.as_dict())


def test_on_redis_a_message_written_for_signal_receivers_is_the_one_written_without():
    sent = message()
    plain = json.loads(task_message(DISPATCH_TASK, sent.task_id, [sent.as_dict()], "q"))

    def receiver(**kwargs):
        pass

    signals.before_task_publish.connect(receiver)
    try:
        signalled = json.loads(task_message(DISPATCH_TASK, sent.task_id, [sent.as_dict()], "q"))
    finally:
        signals.before_task_publish.disconnect(receiver)

    for envelope in (signalled, plain):
        del envelope["properties"]["delivery_tag"]
        envelope["body"] = json.loads(envelope["body"])
    assert signalled == plain


def test_on_redis_a_message_the_broker_refused_sends_no_after_task_publish(publish_signals):
    publisher = CeleryPublisher("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens there

    with pytest.raises(redis.ConnectionError):
        publisher.publish(message(), "notifier")

    assert [what for what, *_ in publish_signals] == ["before"]


def test_the_log_names_the_first_three_records_of_a_larger_event(redis_publisher):
    payload = {"resource_name": "article", "action": "delete", "uri": "/articles"}
    records = [{"old": {"id": f"a{number}"}} for number in range(5)]
    sent = encode(payload, records, list(range(5)), request_id="req-1")

    redis_publisher.publish(sent, "notifier")

    [item] = redis_publisher.client.lrange("notifier", 0, -1)
    assert json.loads(item)["headers"]["argsrepr"] == (
        f"[<message {sent.event_id}: delete article /articles (a0, a1, a2 and 2 more), part 0>]"
    )
