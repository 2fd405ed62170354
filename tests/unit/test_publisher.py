"""notifier.publisher.CeleryPublisher, on Celery's in-memory broker: the message a worker gets."""

import socket
import time

import pytest
from kombu.exceptions import EncodeError, OperationalError

from notifier.message import DISPATCH_TASK, decode, encode
from notifier.publisher import CeleryPublisher


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
        with pytest.raises(OperationalError):
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
