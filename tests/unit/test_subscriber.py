"""notifier.subscriber.Subscriber: each committed event becomes one published message."""

import logging

import pytest

from notifier.errors import ConfigurationError
from notifier.events import AfterResourceChanged
from notifier.settings import parse_settings
from notifier.subscriber import Subscriber
from notifier.wire.message import decode
from tests.unit.fakes import BrokenPublisher, FakeRequest, RecordingPublisher


def subscriber(publisher, **settings):
    return Subscriber(
        parse_settings({f"notifier.{key}": value for key, value in settings.items()}, environ={}),
        publisher,
    )


def after_commit(action="create", resource_name="article", records=None, request=None):
    payload = {
        "timestamp": 1700000000000,
        "action": action,
        "uri": f"/{resource_name}s",
        "user_id": "basicauth:alice",
        "resource_name": resource_name,
    }
    records = records if records is not None else [{"new": {"id": "a1", "title": "Hello"}}]
    return AfterResourceChanged(payload, records, request or FakeRequest())


def test_an_event_is_published_as_one_message_on_its_queue():
    publisher = RecordingPublisher()
    event = after_commit(records=[{"new": {"id": "a1"}}, {"new": {"id": "a2"}}])
    event.positions = [0, 3]

    subscriber(publisher, routes="article.*=articles")(event)

    ((message, queue),) = publisher.published
    assert queue == "articles"
    assert decode(message.as_dict()) == message
    assert message.payload == event.payload
    assert message.impacted_records == event.impacted_records
    assert message.positions == [0, 3]


def test_events_left_out_by_the_settings_are_not_published():
    publisher = RecordingPublisher()
    listen = subscriber(publisher, actions="create update", resources="article")

    listen(after_commit("delete"))
    listen(after_commit("create", "comment"))
    listen(after_commit("read"))
    listen(after_commit("update"))

    assert [(m.action, m.resource_name) for m, _ in publisher.published] == [("update", "article")]


def test_read_events_are_published_when_asked():
    publisher = RecordingPublisher()

    subscriber(publisher, actions="read")(after_commit("read"))

    assert [m.action for m, _ in publisher.published] == ["read"]


def test_a_broker_error_is_one_line_with_the_event_and_its_cause_and_never_raised(caplog):
    with caplog.at_level(logging.INFO, logger="notifier"):
        subscriber(BrokenPublisher())(after_commit())

    (record,) = caplog.records
    assert record.levelno == logging.ERROR  # no spool: the message is lost
    assert record.exc_info is None
    assert "could not publish event" in record.getMessage()
    assert "create article /articles, 1 records" in record.getMessage()
    assert "queue notifier" in record.getMessage()
    assert "(ConnectionError: Error 111 connecting" in record.getMessage()
    assert record.getMessage().endswith("lost, no spool")


def test_a_publish_error_that_is_no_broker_trouble_is_logged_with_its_traceback(caplog):
    class Buggy(RecordingPublisher):
        def publish(self, message, queue):
            raise KeyError("a bug in a publisher")

    with caplog.at_level(logging.ERROR, logger="notifier"):
        subscriber(Buggy())(after_commit())

    (record,) = caplog.records
    assert record.exc_info[0] is KeyError


def test_an_event_that_cannot_be_encoded_is_logged_and_never_raised(caplog):
    publisher = RecordingPublisher()
    event = after_commit(records=["not a change"])

    with caplog.at_level(logging.ERROR, logger="notifier"):
        subscriber(publisher)(event)

    assert publisher.published == []
    (record,) = caplog.records
    assert "could not publish event" in record.getMessage()


def test_the_logged_event_id_is_the_id_of_the_message_that_failed(caplog):
    class SeeThenFail(RecordingPublisher):
        def publish(self, message, queue):
            super().publish(message, queue)
            raise TimeoutError("Timeout reading from socket")

    publisher = SeeThenFail()

    with caplog.at_level(logging.ERROR, logger="notifier"):
        subscriber(publisher)(after_commit())

    ((message, _),) = publisher.published
    assert message.event_id in caplog.records[0].getMessage()


def test_events_of_one_request_share_its_request_id():
    publisher = RecordingPublisher()
    listen = subscriber(publisher)
    request, other_request = FakeRequest(), FakeRequest()

    listen(after_commit("create", request=request))
    listen(after_commit("delete", request=request))
    listen(after_commit("create", request=other_request))

    first, second, third = (message for message, _ in publisher.published)
    assert first.request_id == second.request_id
    assert first.request_id != third.request_id
    assert len({first.event_id, second.event_id, third.event_id}) == 3


def test_events_without_a_request_get_request_ids_of_their_own():
    publisher = RecordingPublisher()
    listen = subscriber(publisher)

    listen(AfterResourceChanged(after_commit().payload, [{"new": {"id": "a1"}}], None))
    listen(AfterResourceChanged(after_commit().payload, [{"new": {"id": "a2"}}], None))

    first, second = (message for message, _ in publisher.published)
    assert first.request_id != second.request_id
    assert first.positions == second.positions == [0]


@pytest.mark.parametrize("missing", ["resource_name", "action"])
def test_an_event_without_resource_name_or_action_is_logged_and_not_published(missing, caplog):
    publisher = RecordingPublisher()
    event = after_commit()
    del event.payload[missing]

    with caplog.at_level(logging.ERROR, logger="notifier"):
        subscriber(publisher)(event)

    assert publisher.published == []
    assert "event not published: no resource_name and action in {" in caplog.text


class CountingBrokenPublisher(BrokenPublisher):
    def __init__(self):
        super().__init__()
        self.attempts = 0

    def publish(self, message, queue):
        self.attempts += 1
        super().publish(message, queue)


def test_after_a_broker_error_the_request_waits_for_the_broker_no_more(caplog):
    publisher = CountingBrokenPublisher()
    request = FakeRequest()
    publish = subscriber(publisher)

    with caplog.at_level(logging.ERROR, logger="notifier"):
        for action in ("create", "update", "delete"):
            publish(after_commit(action=action, request=request))

    assert publisher.attempts == 1
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3
    assert "create article /articles" in lines[0]
    assert "the broker failed earlier in this request" in lines[1]
    assert "delete article /articles" in lines[2]


def test_a_broker_error_in_one_request_does_not_stop_the_next_request_from_trying():
    publisher = CountingBrokenPublisher()
    publish = subscriber(publisher)

    publish(after_commit(request=FakeRequest()))
    publish(after_commit(request=FakeRequest()))

    assert publisher.attempts == 2


def test_one_brokers_failure_does_not_keep_another_publisher_from_the_request():
    broken, working = CountingBrokenPublisher(), RecordingPublisher()
    down, up = subscriber(broken), subscriber(working)
    request = FakeRequest()

    for action in ("create", "update"):
        event = after_commit(action=action, request=request)
        down(event)
        up(event)

    assert broken.attempts == 1
    assert [message.action for message, _ in working.published] == ["create", "update"]


def test_a_large_event_is_published_as_its_parts_in_order():
    publisher = RecordingPublisher()
    records = [{"new": {"id": f"r{n}", "text": "x" * 100}} for n in range(200)]

    subscriber(publisher, max_message_size="4096")(after_commit(records=records))

    parts = [message for message, _ in publisher.published]
    assert len(parts) > 1
    assert [part.part for part in parts] == list(range(len(parts)))
    assert [record for part in parts for record in part.impacted_records] == records


def test_a_max_message_size_that_is_not_a_number_of_bytes_fails_at_start_up():
    with pytest.raises(ConfigurationError, match=r"^notifier.max_message_size = '1kb'"):
        parse_settings({"notifier.max_message_size": "1kb"}, environ={})
