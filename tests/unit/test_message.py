"""The wire contract: encode on the web side, decode on the worker side, and nothing lost."""

import json

import pytest
from celery import Celery

from notifier.errors import MalformedMessage
from notifier.events import AfterResourceChanged
from notifier.settings import parse_settings
from notifier.subscriber import Subscriber
from notifier.wire.message import SCHEMA_VERSION, Message, decode, encode, split
from tasks.listeners.event import Event
from tasks.listeners.registry import Registry
from tests.unit.conftest import kinto_events
from tests.unit.fakes import FakeRequest, RecordingPublisher

PAYLOAD = {
    "timestamp": 1700000000000,
    "action": "update",
    "uri": "/buckets/b1/collections/c1/records/r1",
    "user_id": "basicauth:alice",
    "resource_name": "record",
    "bucket_id": "b1",
    "collection_id": "c1",
    "record_id": "r1",
}
IMPACTED = [
    {"new": {"id": "r1", "n": 2, "last_modified": 1700000000000}, "old": {"id": "r1", "n": 1}}
]


def over_the_wire(message):
    """What a worker reads: the JSON the Celery JSON serializer would carry."""
    return json.loads(json.dumps(message.as_dict()))


def valid_message(**changes):
    data = over_the_wire(encode(PAYLOAD, IMPACTED, [0], request_id="req-1"))
    data.update(changes)
    return data


def without(key):
    data = valid_message()
    del data[key]
    return data


def test_a_message_survives_json_unchanged():
    message = encode(PAYLOAD, IMPACTED, [3], request_id="req-1")

    assert decode(over_the_wire(message)) == message


def test_an_encoded_message_carries_the_event_and_its_identity():
    message = encode(PAYLOAD, IMPACTED, [3], request_id="req-1")

    assert message.version == SCHEMA_VERSION
    assert message.resource_name == "record"
    assert message.action == "update"
    assert message.payload == PAYLOAD
    assert message.impacted_records == IMPACTED
    assert message.positions == [3]
    assert message.request_id == "req-1"
    assert message.event_id


def test_every_message_has_its_own_event_id():
    first = encode(PAYLOAD, IMPACTED, [0], request_id="req-1")
    second = encode(PAYLOAD, IMPACTED, [0], request_id="req-1")

    assert first.event_id != second.event_id


def test_encode_copies_what_it_is_given():
    payload = dict(PAYLOAD)
    impacted = [dict(record) for record in IMPACTED]
    message = encode(payload, impacted, [0], request_id="req-1")

    payload["action"] = "delete"
    impacted.append({"new": {"id": "r2"}})

    assert message.payload["action"] == "update"
    assert len(message.impacted_records) == 1


def test_the_wire_form_names_every_field():
    data = encode(PAYLOAD, IMPACTED, [0], request_id="req-1").as_dict()

    assert set(data) == {
        "version",
        "event_id",
        "request_id",
        "resource_name",
        "action",
        "payload",
        "impacted_records",
        "positions",
        "part",
        "parts",
    }
    assert data["version"] == 1
    assert (data["part"], data["parts"]) == (0, 1)


def test_a_commit_time_travels_with_the_message_when_it_is_set():
    message = encode(PAYLOAD, IMPACTED, [0], request_id="req-1", committed_at=1700000000.5)

    assert message.as_dict()["committed_at"] == 1700000000.5
    assert decode(over_the_wire(message)).committed_at == 1700000000.5


def test_a_message_without_a_commit_time_reads_as_none():
    assert decode(valid_message()).committed_at is None


def test_a_commit_time_that_is_no_number_is_dropped_not_the_message():
    assert decode(valid_message(committed_at="yesterday")).committed_at is None


def test_kintos_name_impacted_objects_is_accepted():
    data = valid_message()
    data["impacted_objects"] = data.pop("impacted_records")

    message = decode(data)

    assert message.impacted_records == IMPACTED


@pytest.mark.parametrize(
    "data", [None, "a message", 42, ["version", 1], b'{"version": 1}'], ids=repr
)
def test_something_other_than_an_object_is_rejected(data):
    with pytest.raises(MalformedMessage, match="a message is a JSON object, not"):
        decode(data)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_an_unknown_schema_version_is_rejected(version):
    with pytest.raises(MalformedMessage) as excinfo:
        decode(valid_message(version=version))

    assert "unknown schema version" in excinfo.value.reason
    assert repr(version) in excinfo.value.reason


def test_a_message_without_version_is_rejected():
    with pytest.raises(MalformedMessage, match="unknown schema version None"):
        decode(without("version"))


@pytest.mark.parametrize(
    "key", ["event_id", "request_id", "resource_name", "action", "payload", "positions"]
)
def test_a_missing_key_is_named(key):
    with pytest.raises(MalformedMessage) as excinfo:
        decode(without(key))

    assert excinfo.value.reason == f"missing keys: {key}"


def test_missing_impacted_records_are_reported():
    with pytest.raises(MalformedMessage, match="missing keys: impacted_"):
        decode(without("impacted_records"))


def test_every_missing_key_is_named_at_once():
    with pytest.raises(MalformedMessage) as excinfo:
        decode({"version": 1, "payload": {}})

    for key in ("event_id", "request_id", "resource_name", "action", "positions"):
        assert key in excinfo.value.reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"payload": ["not", "an", "object"]}, "payload is not a JSON object"),
        ({"resource_name": 7}, "resource_name is not a string"),
        ({"action": None}, "action is not a string"),
        ({"impacted_records": {"new": {}}}, "impacted_records is not a list of JSON objects"),
        ({"impacted_records": ["r1"]}, "impacted_records is not a list of JSON objects"),
        ({"positions": "0"}, "positions is not a list as long as impacted_records"),
        ({"positions": ["0"]}, "positions holds something other than integers"),
        ({"event_id": ""}, "event_id is not a non-empty string"),
        ({"event_id": 12}, "event_id is not a non-empty string"),
        ({"request_id": None}, "request_id is not a non-empty string"),
    ],
)
def test_a_value_of_the_wrong_type_is_rejected_with_the_reason(changes, reason):
    with pytest.raises(MalformedMessage) as excinfo:
        decode(valid_message(**changes))

    assert excinfo.value.reason == reason
    assert str(excinfo.value) == reason


@pytest.mark.parametrize("positions", [[], [0, 1]])
def test_positions_of_another_length_than_the_records_are_rejected(positions):
    with pytest.raises(MalformedMessage, match="positions is not a list as long as"):
        decode(valid_message(positions=positions))


def test_an_unknown_action_is_rejected():
    data = valid_message(action="destroy")
    data["payload"]["action"] = "destroy"

    with pytest.raises(MalformedMessage, match="unknown action 'destroy'"):
        decode(data)


def test_a_resource_name_differing_from_the_payloads_is_rejected():
    with pytest.raises(MalformedMessage) as excinfo:
        decode(valid_message(resource_name="article"))

    assert excinfo.value.reason == "resource_name 'article' differs from the payload's"


def test_an_action_differing_from_the_payloads_is_rejected():
    with pytest.raises(MalformedMessage, match="action 'create' differs from the payload's"):
        decode(valid_message(action="create"))


def test_malformed_message_is_a_value_error_with_its_reason():
    error = MalformedMessage("because")

    assert isinstance(error, ValueError)
    assert error.reason == "because"


def test_a_message_is_immutable():
    message = encode(PAYLOAD, IMPACTED, [0], request_id="req-1")

    with pytest.raises(AttributeError):
        message.action = "delete"  # type: ignore[misc]


# -- contract: the web side's real output, through the worker side -------------------------------


AFTER_COMMIT = kinto_events("AfterResourceChanged")


@pytest.fixture(scope="module")
def worker_listener():
    """A listener of every event, registered once (Celery shares task names between apps)."""
    received = []
    registry = Registry(Celery("contract", broker="memory://", set_as_current=False))
    returned = registry.listener("*", name="contract.receive")(received.append)
    assert returned == received.append
    return registry["contract.receive"].task, received


@pytest.fixture
def listener_task(worker_listener):
    task, received = worker_listener
    received.clear()
    return task, received


def test_the_kinto_fixture_has_the_events_the_contract_tests_rely_on():
    steps = {event["step"] for event in AFTER_COMMIT}

    assert len(AFTER_COMMIT) == 17
    assert {"create_bucket", "update_record_patch", "delete_record", "extra_batch_mixed"} <= steps
    assert {event["payload"]["action"] for event in AFTER_COMMIT} == {"create", "update", "delete"}


@pytest.mark.parametrize(
    "kinto_event",
    AFTER_COMMIT,
    ids=[f"{e['step']}-{e['payload']['resource_name']}" for e in AFTER_COMMIT],
)
def test_every_kinto_event_reaches_a_listener_as_it_was_emitted(kinto_event, listener_task):
    # Web side: the real subscriber, with the real settings, to a recording publisher.
    publisher = RecordingPublisher()
    subscriber = Subscriber(parse_settings({}, environ={}), publisher)
    subscriber(
        AfterResourceChanged(kinto_event["payload"], kinto_event["impacted_objects"], FakeRequest())
    )
    ((message, queue),) = publisher.published
    assert queue == "notifier"
    data = over_the_wire(message)

    # Worker side: decode, then a registered listener's task, run as a worker runs it.
    assert decode(data) == message
    assert isinstance(message.committed_at, float)
    assert decode(data).committed_at == message.committed_at
    task, received = listener_task
    task.run(data)

    (event,) = received
    assert isinstance(event, Event)
    assert event.payload == kinto_event["payload"]
    assert event.impacted_records == kinto_event["impacted_objects"]
    assert event.impacted_objects is event.impacted_records
    assert event.resource_name == kinto_event["payload"]["resource_name"]
    assert event.action == kinto_event["payload"]["action"]
    assert event.positions == list(range(len(kinto_event["impacted_objects"])))
    assert event.event_id == message.event_id


def test_the_events_of_one_kinto_batch_share_a_request_id():
    batch = [event for event in AFTER_COMMIT if event["step"] == "extra_batch_mixed"]
    publisher = RecordingPublisher()
    subscriber = Subscriber(parse_settings({}, environ={}), publisher)
    request = FakeRequest()

    for kinto_event in batch:
        subscriber(
            AfterResourceChanged(kinto_event["payload"], kinto_event["impacted_objects"], request)
        )

    messages = [decode(over_the_wire(message)) for message, _ in publisher.published]
    assert len(messages) == len(batch) == 4
    assert len({message.request_id for message in messages}) == 1
    assert len({message.event_id for message in messages}) == 4


def test_a_kinto_message_using_impacted_objects_decodes_into_the_same_event():
    kinto_event = AFTER_COMMIT[0]
    message = encode(kinto_event["payload"], kinto_event["impacted_objects"], [0], "req-1")
    data = over_the_wire(message)
    data["impacted_objects"] = data.pop("impacted_records")

    event = Event.from_message(decode(data))

    assert event.impacted_objects == kinto_event["impacted_objects"]
    assert isinstance(event, Message)


def big_event(records, record_size=100):
    impacted = [{"new": {"id": f"r{n}", "text": "x" * record_size}} for n in range(records)]
    return encode(PAYLOAD, impacted, list(range(records)), request_id="req-1")


def test_an_event_that_fits_is_one_message():
    message = big_event(10)

    assert split(message, 64 * 1024) == [message]


def test_a_large_event_travels_as_bounded_parts_in_order():
    message = big_event(1000)  # about 130 kB of records

    parts = split(message, 16 * 1024)

    assert len(parts) > 1
    assert [part.part for part in parts] == list(range(len(parts)))
    assert {part.parts for part in parts} == {len(parts)}
    assert {part.event_id for part in parts} == {message.event_id}
    assert all(part.payload == message.payload for part in parts)
    assert all(len(json.dumps(part.impacted_records)) <= 16 * 1024 for part in parts)
    assert [r for part in parts for r in part.impacted_records] == message.impacted_records
    assert [p for part in parts for p in part.positions] == message.positions
    assert len({part.task_id for part in parts}) == len(parts)


def test_a_record_larger_than_the_bound_travels_alone():
    message = big_event(3, record_size=5000)

    parts = split(message, 1024)

    assert [len(part.impacted_records) for part in parts] == [1, 1, 1]


def test_parts_round_trip_and_a_part_outside_its_event_is_malformed():
    part = split(big_event(100), 2048)[1]

    assert decode(json.loads(json.dumps(part.as_dict()))) == part
    with pytest.raises(MalformedMessage, match="part 3 of 2 is not a part of an event"):
        decode({**part.as_dict(), "part": 3, "parts": 2})
