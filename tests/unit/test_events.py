"""notifier.events: Cliquet's payload, and the per-request merging of changes into events."""

from dataclasses import dataclass, field

import pytest

from notifier.events import AfterResourceChanged, EventBuffer, ResourceChanged, make_payload
from notifier.wire.payload import ACTIONS, parent_of

CLIQUET_KEYS = {"timestamp", "action", "uri", "user_id", "resource_name"}


@dataclass
class FakeRequest:
    path: str
    matchdict: dict | None = field(default_factory=dict)
    authenticated_userid: str | None = "basicauth:alice"


RECORDS_URL = FakeRequest(
    "/buckets/b1/collections/c1/records", {"bucket_id": "b1", "collection_id": "c1"}
)
RECORD_URL = FakeRequest(
    "/buckets/b1/collections/c1/records/r1",
    {"bucket_id": "b1", "collection_id": "c1", "id": "r1"},
)


def test_create_payload_has_cliquets_keys_and_the_matchdict_values():
    payload = make_payload(RECORDS_URL, ACTIONS.CREATE, "record", timestamp=1700000000000)

    assert payload == {
        "timestamp": 1700000000000,
        "action": "create",
        "uri": "/buckets/b1/collections/c1/records",
        "user_id": "basicauth:alice",
        "resource_name": "record",
        "bucket_id": "b1",
        "collection_id": "c1",
    }


def test_update_payload_renames_the_matchdict_id_after_the_resource():
    payload = make_payload(RECORD_URL, ACTIONS.UPDATE, "record", timestamp=1)

    assert set(payload) == CLIQUET_KEYS | {"bucket_id", "collection_id", "record_id"}
    assert payload["record_id"] == "r1"
    assert "id" not in payload
    assert payload["action"] == "update"
    assert payload["uri"] == "/buckets/b1/collections/c1/records/r1"


def test_delete_payload_keeps_the_parent_ids():
    payload = make_payload(RECORD_URL, ACTIONS.DELETE, "record", timestamp=1)

    assert payload["action"] == "delete"
    assert payload["bucket_id"] == "b1"
    assert payload["collection_id"] == "c1"
    assert payload["record_id"] == "r1"


def test_an_explicit_record_id_wins_over_the_matchdict():
    payload = make_payload(RECORD_URL, ACTIONS.UPDATE, "record", record_id="r9", timestamp=1)

    assert payload["record_id"] == "r9"
    assert "id" not in payload


def test_an_explicit_record_id_is_added_when_the_url_names_none():
    payload = make_payload(RECORDS_URL, ACTIONS.CREATE, "record", record_id="r2", timestamp=1)

    assert payload["record_id"] == "r2"
    assert set(payload) == CLIQUET_KEYS | {"bucket_id", "collection_id", "record_id"}


def test_a_request_without_matchdict_gives_only_cliquets_keys():
    request = FakeRequest("/articles", None, authenticated_userid=None)

    payload = make_payload(request, ACTIONS.CREATE, "article", timestamp=1)

    assert set(payload) == CLIQUET_KEYS
    assert payload["user_id"] is None


def test_the_timestamp_defaults_to_now_in_milliseconds(monkeypatch):
    monkeypatch.setattr("notifier.events.time.time", lambda: 1700000000.1234)

    payload = make_payload(RECORDS_URL, ACTIONS.CREATE, "record")

    assert payload["timestamp"] == 1700000000123


def test_make_payload_does_not_change_the_requests_matchdict():
    request = FakeRequest("/articles/a1", {"id": "a1"})

    make_payload(request, ACTIONS.DELETE, "article", timestamp=1)

    assert request.matchdict == {"id": "a1"}


def test_the_parent_of_a_record_is_its_bucket_and_collection_whatever_its_own_id():
    created = make_payload(RECORDS_URL, ACTIONS.CREATE, "record", timestamp=1)
    updated = make_payload(RECORD_URL, ACTIONS.UPDATE, "record", timestamp=2)

    assert (
        parent_of(created) == parent_of(updated) == (("bucket_id", "b1"), ("collection_id", "c1"))
    )


def test_actions_parse_from_names_and_refuse_unknown_ones():
    assert ACTIONS.from_string_list(["create", "read"]) == (ACTIONS.CREATE, ACTIONS.READ)
    with pytest.raises(ValueError, match="destroy"):
        ACTIONS.from_string_list(["destroy"])


# -- merging ---------------------------------------------------------------------------------


def article(action, article_id, *, timestamp=1):
    request = FakeRequest(f"/articles/{article_id}", {"id": article_id})
    return make_payload(request, ACTIONS(action), "article", timestamp=timestamp)


def record_in(collection_id, action, record_id):
    request = FakeRequest(
        f"/buckets/b1/collections/{collection_id}/records/{record_id}",
        {"bucket_id": "b1", "collection_id": collection_id, "id": record_id},
    )
    return make_payload(request, ACTIONS(action), "record", timestamp=1)


def test_changes_of_one_kind_merge_into_one_event_with_the_first_payload():
    buffer = EventBuffer()
    first = article("create", "a1", timestamp=10)
    buffer.add(first, {"new": {"id": "a1"}})
    buffer.add(article("create", "a2", timestamp=20), {"new": {"id": "a2"}})

    (event,) = buffer.events(AfterResourceChanged, request=None)

    assert event.payload == first
    assert event.impacted_records == [{"new": {"id": "a1"}}, {"new": {"id": "a2"}}]
    assert event.positions == [0, 1]


def test_delete_create_delete_of_one_record_keeps_the_chronological_positions():
    buffer = EventBuffer()
    buffer.add(article("delete", "x"), {"old": {"id": "x", "v": 1}})
    buffer.add(article("create", "x"), {"new": {"id": "x", "v": 2}})
    buffer.add(article("delete", "x"), {"old": {"id": "x", "v": 2}})

    deleted, created = buffer.events(AfterResourceChanged, request=None)

    assert deleted.payload["action"] == "delete"
    assert deleted.impacted_records == [{"old": {"id": "x", "v": 1}}, {"old": {"id": "x", "v": 2}}]
    assert deleted.positions == [0, 2]
    assert created.payload["action"] == "create"
    assert created.impacted_records == [{"new": {"id": "x", "v": 2}}]
    assert created.positions == [1]
    assert len(buffer) == 3


def test_positions_let_a_worker_replay_the_request_in_order():
    buffer = EventBuffer()
    changes = [
        (article("create", "a"), {"new": {"id": "a"}}),
        (article("update", "a"), {"new": {"id": "a", "v": 2}, "old": {"id": "a"}}),
        (article("create", "b"), {"new": {"id": "b"}}),
        (article("delete", "a"), {"old": {"id": "a", "v": 2}}),
        (article("update", "b"), {"new": {"id": "b", "v": 2}, "old": {"id": "b"}}),
    ]
    for payload, impacted in changes:
        buffer.add(payload, impacted)

    replayed = sorted(
        (position, record)
        for event in buffer.events(AfterResourceChanged, request=None)
        for position, record in zip(event.positions, event.impacted_records, strict=True)
    )

    assert [record for _, record in replayed] == [impacted for _, impacted in changes]


def test_records_of_different_parents_are_not_merged():
    buffer = EventBuffer()
    buffer.add(record_in("c1", "create", "r1"), {"new": {"id": "r1"}})
    buffer.add(record_in("c2", "create", "r2"), {"new": {"id": "r2"}})
    buffer.add(record_in("c1", "create", "r3"), {"new": {"id": "r3"}})

    in_c1, in_c2 = buffer.events(ResourceChanged, request=None)

    assert in_c1.payload["collection_id"] == "c1"
    assert in_c1.impacted_records == [{"new": {"id": "r1"}}, {"new": {"id": "r3"}}]
    assert in_c1.positions == [0, 2]
    assert in_c2.payload["collection_id"] == "c2"
    assert in_c2.positions == [1]


def test_different_resources_are_not_merged():
    buffer = EventBuffer()
    buffer.add(article("create", "a1"), {"new": {"id": "a1"}})
    buffer.add(record_in("c1", "create", "a1"), {"new": {"id": "a1"}})

    events = buffer.events(AfterResourceChanged, request=None)

    assert [event.payload["resource_name"] for event in events] == ["article", "record"]


def test_events_come_in_the_order_each_kind_first_happened():
    buffer = EventBuffer()
    buffer.add(article("update", "a"), {"new": {"id": "a"}, "old": {"id": "a"}})
    buffer.add(article("create", "b"), {"new": {"id": "b"}})
    buffer.add(article("update", "b"), {"new": {"id": "b"}, "old": {"id": "b"}})
    buffer.add(article("delete", "a"), {"old": {"id": "a"}})

    events = buffer.events(AfterResourceChanged, request=None)

    assert [event.payload["action"] for event in events] == ["update", "create", "delete"]


def test_events_are_built_with_the_requested_class_and_request():
    buffer = EventBuffer()
    buffer.add(article("create", "a"), {"new": {"id": "a"}})
    request = object()

    (before,) = buffer.events(ResourceChanged, request)
    (after,) = buffer.events(AfterResourceChanged, request)

    assert type(before) is ResourceChanged
    assert type(after) is AfterResourceChanged
    assert before.request is after.request is request


def test_an_empty_buffer_gives_no_events():
    buffer = EventBuffer()

    assert buffer.events(AfterResourceChanged, request=None) == []
    assert len(buffer) == 0


def test_impacted_objects_is_the_same_list_as_impacted_records():
    event = AfterResourceChanged(article("create", "a"), [{"new": {"id": "a"}}])

    assert event.impacted_objects is event.impacted_records
    assert event.positions == [0]


def test_an_event_repr_says_what_happened():
    event = ResourceChanged(article("delete", "a"), [{"old": {"id": "a"}}])

    assert repr(event) == "<ResourceChanged delete article /articles/a (1 records)>"
