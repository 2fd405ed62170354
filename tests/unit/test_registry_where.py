"""tasks.listeners.registry: ``@listener(where=...)`` keeps only the messages whose payload has the
values.

Kinto users ask for per-bucket hooks: ``where={"bucket_id": "blog"}``. Each test has a Celery
app and a Registry of its own.
"""

import pytest

from notifier.errors import ListenerError
from notifier.wire.message import encode
from tests.unit.builders import fan_out_to


def ignore(event):
    """A listener body for tests about matching only (Celery refuses lambdas)."""
    return event


def record_message(bucket_id="b1", collection_id="c1", action="create", **payload):
    """A message about a Kinto record, as the worker receives it."""
    payload = {
        "timestamp": 1795509277828,
        "action": action,
        "uri": f"/buckets/{bucket_id}/collections/{collection_id}/records",
        "user_id": "basicauth:alice",
        "resource_name": "record",
        "bucket_id": bucket_id,
        "collection_id": collection_id,
        **payload,
    }
    return encode(payload, [{"new": {"id": "r1"}}], [0], request_id="req-1")


def bucket_message(bucket_id="b1"):
    payload = {
        "timestamp": 1795509277828,
        "action": "create",
        "uri": f"/buckets/{bucket_id}",
        "user_id": "basicauth:alice",
        "resource_name": "bucket",
        "bucket_id": bucket_id,
    }
    return encode(payload, [{"new": {"id": bucket_id}}], [0], request_id="req-1")


def test_a_listener_with_where_wants_only_messages_whose_payload_has_that_value(registry):
    registry.listener("record", name="blog_hook", where={"bucket_id": "b1"})(ignore)

    listener = registry["blog_hook"]
    assert listener.where == {"bucket_id": {"b1"}}
    assert listener.wants(record_message(bucket_id="b1"))
    assert not listener.wants(record_message(bucket_id="b2"))


def test_a_list_of_values_accepts_any_of_them(registry):
    registry.listener(name="pages", where={"collection_id": ["posts", "pages"]})(ignore)

    listener = registry["pages"]
    assert listener.wants(record_message(collection_id="posts"))
    assert listener.wants(record_message(collection_id="pages"))
    assert not listener.wants(record_message(collection_id="drafts"))


def test_any_iterable_of_values_is_accepted(registry):
    registry.listener(name="set", where={"collection_id": {"posts", "pages"}})(ignore)
    registry.listener(name="tuple", where={"collection_id": ("posts",)})(ignore)

    assert registry["set"].where == {"collection_id": {"posts", "pages"}}
    assert registry["tuple"].wants(record_message(collection_id="posts"))


def test_a_payload_without_the_key_does_not_match(registry):
    registry.listener("*", name="collections", where={"collection_id": "c1"})(ignore)

    listener = registry["collections"]
    assert not listener.wants(bucket_message())
    assert listener.wants(record_message(collection_id="c1"))


def test_every_key_of_where_must_match(registry):
    registry.listener(name="one_collection", where={"bucket_id": "b1", "collection_id": "c1"})(
        ignore
    )

    listener = registry["one_collection"]
    assert listener.wants(record_message(bucket_id="b1", collection_id="c1"))
    assert not listener.wants(record_message(bucket_id="b1", collection_id="c2"))
    assert not listener.wants(record_message(bucket_id="b2", collection_id="c1"))


def test_where_narrows_the_resources_and_actions_and_does_not_widen_them(registry):
    registry.listener("record", actions="delete", name="deletions", where={"bucket_id": "b1"})(
        ignore
    )

    listener = registry["deletions"]
    assert listener.wants(record_message(action="delete"))
    assert not listener.wants(record_message(action="create"))
    assert not listener.wants(bucket_message())


def test_a_listener_without_where_wants_every_payload(registry):
    registry.listener(name="everything")(ignore)
    registry.listener(name="empty_where", where={})(ignore)

    for name in ("everything", "empty_where"):
        assert registry[name].where == {}
        assert registry[name].wants(record_message(bucket_id="anything"))


def test_matching_keeps_only_the_listeners_whose_where_matches_in_their_order(registry):
    registry.listener(name="all_buckets")(ignore)
    registry.listener(name="b1_hook", where={"bucket_id": "b1"})(ignore)
    registry.listener(name="b2_hook", where={"bucket_id": "b2"})(ignore)
    registry.listener(name="b1_or_b2", where={"bucket_id": ["b2", "b1"]})(ignore)

    names = [listener.name for listener in registry.matching(record_message(bucket_id="b1"))]

    assert names == ["all_buckets", "b1_hook", "b1_or_b2"]


def test_dispatch_sends_a_message_only_to_the_listeners_whose_where_matches(registry, monkeypatch):
    registry.listener(name="b1_hook", where={"bucket_id": "b1"})(ignore)
    registry.listener(name="b2_hook", where={"bucket_id": "b2"})(ignore)
    sent = []
    for listener in registry:
        monkeypatch.setattr(
            listener.task,
            "apply_async",
            lambda name=listener.name, **options: sent.append(name),
        )

    names = fan_out_to(registry, record_message(bucket_id="b2").as_dict())

    assert names == sent == ["b2_hook"]


def test_a_payload_value_that_is_a_list_matches_no_where_and_stops_no_other_listener(registry):
    registry.listener(name="tagged", where={"tags": "news"})(ignore)
    registry.listener(name="everything")(ignore)

    names = [listener.name for listener in registry.matching(record_message(tags=["news"]))]

    assert names == ["everything"]


@pytest.mark.parametrize(
    "where",
    [
        {"bucket_id": 1},
        {"bucket_id": None},
        {"bucket_id": ["b1", 2]},
        {"bucket_id": []},
        {"bucket_id": ()},
        {1: "b1"},
        "bucket_id",
    ],
    ids=[
        "a-number",
        "none",
        "a-number-in-a-list",
        "an-empty-list",
        "an-empty-tuple",
        "a-key-that-is-no-string",
        "not-a-mapping",
    ],
)
def test_a_bad_where_is_refused_when_applied_with_a_message_that_shows_how_to_write_it(
    registry, where
):
    with pytest.raises(ListenerError) as error:
        registry.listener(name="bad", where=where)

    message = str(error.value)
    assert "where={'bucket_id': 'blog'}" in message
    assert "where={'collection_id': ['posts', 'pages']}" in message
    assert len(registry) == 0
