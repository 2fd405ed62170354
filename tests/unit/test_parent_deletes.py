"""Parent deletes: the delete of a bucket, a collection or a blog drops every record under it.

``@listener(..., parents=(...))`` receives those deletes (tasks.listeners.registry), which say what
to drop (``Event.deleted_parents``), and the search index drops what is under them
(``SearchIndex.apply(event, parents)``). The Kinto events are the golden ones Kinto 26.5 sent.
"""

import fakeredis
import pytest
from celery import signals

from notifier.errors import ListenerError
from notifier.wire.message import encode
from tasks.builtin.search_index import SearchIndex
from tasks.listeners.event import Event, scopes_above
from tasks.listeners.ordered import OrderGuard
from tests.unit.builders import fan_out_to
from tests.unit.conftest import kinto_events

KINTO_PARENTS = frozenset({"bucket", "collection"})


@pytest.fixture
def guard_client():
    return fakeredis.FakeRedis()


@pytest.fixture
def index(tmp_path):
    return SearchIndex(str(tmp_path / "search-index.sqlite3"))


def ignore(event):
    """A listener body for tests about matching only (Celery refuses lambdas)."""
    return event


def event(resource_name, action, changes, timestamp=1000, **matchdict):
    payload = {
        "timestamp": timestamp,
        "action": action,
        "uri": f"/{resource_name}s",
        "user_id": "basicauth:alice",
        "resource_name": resource_name,
        **matchdict,
    }
    message = encode(payload, changes, list(range(len(changes))), request_id="req-1")
    return Event.from_message(message)


def kinto_step(step):
    """The event Kinto sent after the commit of ``step``, as a worker receives it."""
    (recorded,) = [e for e in kinto_events("AfterResourceChanged") if e["step"] == step]
    payload = recorded["payload"]
    changes = recorded["impacted_objects"]
    message = encode(payload, changes, list(range(len(changes))), request_id=step)
    return Event.from_message(message)


def records_in(collection_id, *records, action="create", bucket_id="b1", timestamp=1000):
    changes = [{"new": record} for record in records]
    return event(
        "record",
        action,
        changes,
        timestamp=timestamp,
        bucket_id=bucket_id,
        collection_id=collection_id,
    )


def collection_delete(collection_id, last_modified, bucket_id="b1"):
    dead = {"id": collection_id, "last_modified": last_modified, "deleted": True}
    return event(
        "collection",
        "delete",
        [{"new": dead, "old": {"id": collection_id, "title": "a collection"}}],
        timestamp=last_modified,
        bucket_id=bucket_id,
        collection_id=collection_id,
    )


def bucket_delete(bucket_id, last_modified):
    dead = {"id": bucket_id, "last_modified": last_modified, "deleted": True}
    return event(
        "bucket",
        "delete",
        [{"new": dead, "old": {"id": bucket_id}}],
        timestamp=last_modified,
        bucket_id=bucket_id,
    )


def record(record_id, last_modified, title="Spring in Paris"):
    return {"id": record_id, "title": title, "last_modified": last_modified}


def deleted_record(record_id, last_modified):
    return {"id": record_id, "last_modified": last_modified, "deleted": True}


# Which listeners receive a parent delete


def test_a_listener_with_parents_receives_their_deletes_and_nothing_else_of_them(registry):
    registry.listener("record", name="records", parents=("bucket", "collection"))(ignore)
    records = registry["records"]

    assert records.wants(collection_delete("c1", 50))
    assert records.wants(bucket_delete("b1", 50))
    assert not records.wants(event("collection", "create", [{"new": {"id": "c1"}}], bucket_id="b1"))
    assert not records.wants(event("group", "delete", [{"old": {"id": "g1"}}], bucket_id="b1"))
    assert records.wants(records_in("c1", record("r1", 1)))


def test_a_listener_without_parents_does_not_receive_a_parent_delete(registry):
    registry.listener("record", name="records")(ignore)

    assert not registry["records"].wants(collection_delete("c1", 50))
    assert not registry["records"].is_parent_delete(collection_delete("c1", 50))


def test_a_parent_delete_is_received_whatever_actions_the_listener_names(registry):
    registry.listener("record", name="creations", actions=("create",), parents="collection")(ignore)

    assert registry["creations"].parents == {"collection"}
    assert registry["creations"].wants(collection_delete("c1", 50))


@pytest.mark.parametrize(
    ("deleted", "wanted"),
    [
        (bucket_delete("blog", 50), True),  # it has no collection_id: it may hold "posts"
        (bucket_delete("shop", 50), False),
        (collection_delete("posts", 50, bucket_id="blog"), True),
        (collection_delete("pages", 50, bucket_id="blog"), False),
        (collection_delete("posts", 50, bucket_id="shop"), False),
    ],
    ids=["its-bucket", "another-bucket", "its-collection", "another-collection", "elsewhere"],
)
def test_where_keys_absent_from_a_parent_delete_do_not_filter_it_out(registry, deleted, wanted):
    registry.listener(
        "record",
        name="blog_posts",
        where={"bucket_id": "blog", "collection_id": "posts"},
        parents=("bucket", "collection"),
    )(ignore)

    assert registry["blog_posts"].wants(deleted) is wanted


def test_dispatch_sends_a_parent_delete_to_the_listeners_that_have_that_parent(registry):
    registry.listener("record", name="with_parents", parents=("collection",))(ignore)
    registry.listener("record", name="without_parents")(ignore)
    sent = []

    def record_sent(sender=None, **kwargs):
        sent.append(sender)

    signals.before_task_publish.connect(record_sent)
    try:
        fan_out_to(registry, collection_delete("c1", 50).as_dict())
    finally:
        signals.before_task_publish.disconnect(record_sent)

    assert sent == ["with_parents"]


@pytest.mark.parametrize(
    "parents",
    [("record",), ("*",), ("bad-name",), ("",), ("collection", 5), "record"],
    ids=["its-own-resource", "star", "dash", "empty", "not-a-string", "own-as-string"],
)
def test_a_bad_parent_fails_when_applied_and_says_what_parents_are(registry, parents):
    with pytest.raises(ListenerError, match=r"bad parents .*name the resources whose deletes"):
        registry.listener(["record", "comment"], parents=parents)(ignore)


def test_the_bad_parent_is_named(registry):
    with pytest.raises(ListenerError, match=r"bad parents \['comment'\]"):
        registry.listener(["record", "comment"], parents=("collection", "comment"))(ignore)


def test_parents_of_a_listener_of_every_resource_fail(registry):
    with pytest.raises(ListenerError, match=r"parents=\['collection'\] with every resource"):
        registry.listener("*", parents=("collection",))(ignore)


def test_ordered_must_be_true_or_false(registry):
    with pytest.raises(ListenerError, match="bad ordered='yes': use True or False"):
        registry.listener("record", ordered="yes")(ignore)


# What a parent delete says to drop


def test_a_kinto_collection_delete_drops_what_is_in_its_bucket_and_collection():
    deleted = kinto_step("delete_collection_with_records")

    assert deleted.deleted_parents == [{"bucket_id": "b1", "collection_id": "c1"}]


def test_a_kinto_bucket_delete_drops_what_is_in_the_bucket():
    deleted = kinto_step("extra_delete_bucket")

    assert deleted.deleted_parents == [{"bucket_id": "b1"}]


def test_a_delete_of_several_collections_drops_each_one():
    deleted = event(
        "collection",
        "delete",
        [{"new": {"id": "c1", "deleted": True}}, {"old": {"id": "c2"}}, {"old": {}}],
        bucket_id="b1",
    )

    assert deleted.deleted_parents == [
        {"bucket_id": "b1", "collection_id": "c1"},
        {"bucket_id": "b1", "collection_id": "c2"},
    ]


def test_a_tombstone_without_an_id_drops_the_parent_its_old_record_names(guard_client):
    # As the order guard and the search index read it: the new record's id, else the old's.
    deleted = event(
        "collection",
        "delete",
        [{"new": {"deleted": True, "last_modified": 60}, "old": {"id": "c1"}}],
        bucket_id="b1",
    )

    assert deleted.deleted_parents == [{"bucket_id": "b1", "collection_id": "c1"}]
    claim = OrderGuard(guard_client).claim("l", deleted, parents=("collection",))
    assert claim.new_event is deleted


def test_an_event_that_deletes_nothing_drops_nothing():
    assert kinto_step("create_collection").deleted_parents == []
    assert kinto_step("update_record_put").deleted_parents == []


def test_the_scopes_above_a_record_are_every_part_of_its_parent():
    parent = (("bucket_id", "b1"), ("collection_id", "c1"))

    assert list(scopes_above(parent)) == [
        (("bucket_id", "b1"),),
        (("collection_id", "c1"),),
        (("bucket_id", "b1"), ("collection_id", "c1")),
    ]


def test_a_record_without_a_parent_has_no_scope_above_it():
    assert list(scopes_above(())) == []


# The search index drops what is under a deleted parent


def test_the_kinto_collection_delete_drops_its_records_from_the_index(index):
    for step in ("create_record_1", "create_record_2", "update_record_patch", "create_record_3"):
        index.apply(kinto_step(step), KINTO_PARENTS)
    assert len(index) == 3

    index.apply(kinto_step("delete_collection_with_records"), KINTO_PARENTS)

    assert len(index) == 0


def give_the_search_index(index, registry, recorded_events):
    """What a worker with NOTIFIER_SEARCH_RESOURCES=record and NOTIFIER_SEARCH_PARENTS=bucket
    collection gives the index of Kinto's events: the records' events and the parent deletes."""
    registry.listener("record", name="search", parents=KINTO_PARENTS)(ignore)
    for recorded in recorded_events:
        changes = recorded["impacted_objects"]
        message = encode(
            recorded["payload"], changes, list(range(len(changes))), request_id=recorded["step"]
        )
        if registry["search"].wants(message):
            index.apply(Event.from_message(message), KINTO_PARENTS)


def test_the_kinto_story_ends_with_an_empty_index(index, registry):
    give_the_search_index(index, registry, kinto_events("AfterResourceChanged"))

    assert len(index) == 0


def test_the_kinto_story_delivered_backwards_ends_with_an_empty_index(index, registry):
    give_the_search_index(index, registry, reversed(kinto_events("AfterResourceChanged")))

    assert len(index) == 0


def test_the_kinto_bucket_delete_drops_the_records_of_every_collection_in_it(index):
    index.apply(records_in("c1", record("r1", 10)), KINTO_PARENTS)
    index.apply(records_in("c2", record("r2", 10)), KINTO_PARENTS)
    index.apply(records_in("c1", record("r3", 10), bucket_id="b2"), KINTO_PARENTS)

    index.apply(kinto_step("extra_delete_bucket"), KINTO_PARENTS)

    assert [found["id"] for found in index.search("paris")] == ["r3"]


def test_a_collection_delete_leaves_the_records_of_other_collections(index):
    index.apply(records_in("c1", record("r1", 10)), KINTO_PARENTS)
    index.apply(records_in("c2", record("r1", 10)), KINTO_PARENTS)

    index.apply(collection_delete("c1", 50), KINTO_PARENTS)

    assert len(index) == 1
    index.apply(records_in("c2", {**record("r1", 60), "title": "Autumn in Rome"}, action="update"))
    assert index.search("rome") == [{**record("r1", 60), "title": "Autumn in Rome"}]


def test_an_older_change_under_a_deleted_collection_arriving_late_is_not_indexed(index):
    index.apply(collection_delete("c1", 50), KINTO_PARENTS)

    index.apply(records_in("c1", record("r1", 40)), KINTO_PARENTS)
    index.apply(records_in("c1", deleted_record("r2", 45), action="delete"), KINTO_PARENTS)

    assert len(index) == 0
    assert index.search("paris") == []


def test_a_record_without_last_modified_is_as_old_as_its_events_timestamp(index):
    # An app whose records carry no last_modified: the payload's timestamp dates the change.
    index.apply(collection_delete("c1", 50), KINTO_PARENTS)
    before = {"id": "r1", "title": "Spring in Paris"}
    after = {"id": "r2", "title": "Summer in Paris"}

    index.apply(records_in("c1", before, timestamp=40), KINTO_PARENTS)
    index.apply(records_in("c1", after, timestamp=60), KINTO_PARENTS)

    assert index.search("paris") == [after]


def test_a_change_newer_than_the_collection_delete_is_indexed(index):
    index.apply(collection_delete("c1", 50), KINTO_PARENTS)

    index.apply(records_in("c1", record("r1", 60)), KINTO_PARENTS)

    assert index.search("paris") == [record("r1", 60)]


def test_a_record_newer_than_a_collection_delete_arriving_late_stays(index):
    index.apply(records_in("c1", record("r1", 60)), KINTO_PARENTS)

    index.apply(collection_delete("c1", 50), KINTO_PARENTS)

    assert index.search("paris") == [record("r1", 60)]


def test_an_older_collection_delete_arriving_late_does_not_lower_the_drop(index):
    index.apply(collection_delete("c1", 50), KINTO_PARENTS)
    index.apply(collection_delete("c1", 30), KINTO_PARENTS)

    index.apply(records_in("c1", record("r1", 40)), KINTO_PARENTS)

    assert len(index) == 0


def test_a_bucket_delete_keeps_out_late_changes_in_all_its_collections(index):
    index.apply(bucket_delete("b1", 50), KINTO_PARENTS)

    index.apply(records_in("c1", record("r1", 40)), KINTO_PARENTS)
    index.apply(records_in("c9", record("r2", 40)), KINTO_PARENTS)
    index.apply(records_in("c1", record("r3", 40), bucket_id="b2"), KINTO_PARENTS)

    assert [found["id"] for found in index.search("paris")] == ["r3"]


def test_without_parents_a_collection_delete_is_only_the_delete_of_a_collection(index):
    index.apply(records_in("c1", record("r1", 10)))

    index.apply(collection_delete("c1", 50))

    assert index.search("paris") == [record("r1", 10)]


def test_a_blog_delete_drops_its_articles_and_no_other_blogs(index):
    def article(blog_id, article_id):
        return event(
            "article", "create", [{"new": record(article_id, 10)}], timestamp=10, blog_id=blog_id
        )

    index.apply(article("travel", "a1"), frozenset({"blog"}))
    index.apply(article("food", "a2"), frozenset({"blog"}))
    blog_delete = event(
        "blog", "delete", [{"old": {"id": "travel", "title": "Travel"}}], timestamp=20
    )

    index.apply(blog_delete, frozenset({"blog"}))

    assert [found["id"] for found in index.search("paris")] == ["a2"]
    index.apply(article("travel", "a1"), frozenset({"blog"}))
    assert [found["id"] for found in index.search("paris")] == ["a2"]
