"""tasks.builtin.search_index.SearchIndex: the search index listener's SQLite full-text index."""

import sqlite3
import threading
from contextlib import closing

import pytest

from notifier.wire.message import encode
from tasks.builtin.search_index import SearchIndex
from tasks.listeners.event import Event


@pytest.fixture
def index(tmp_path):
    return SearchIndex(str(tmp_path / "search-index.sqlite3"))


def event(action, impacted, resource_name="article", **parent):
    payload = {
        "timestamp": 1700000000000,
        "action": action,
        "uri": f"/{resource_name}s",
        "user_id": None,
        "resource_name": resource_name,
        **parent,
    }
    message = encode(payload, impacted, list(range(len(impacted))), request_id="req-1")
    return Event.from_message(message)


def created(*records, **kwargs):
    return event("create", [{"new": record} for record in records], **kwargs)


def titles(records):
    return sorted(record["title"] for record in records)


PARIS = {"id": "a1", "title": "Spring in Paris", "body": "Cherry trees", "last_modified": 1}
ROME = {"id": "a2", "title": "Summer in Rome", "body": "Hot streets", "last_modified": 2}


def test_a_created_record_is_found_by_its_words(index):
    index.apply(created(PARIS, ROME))

    assert index.search("paris") == [PARIS]
    assert index.search("cherry trees") == [PARIS]
    assert titles(index.search("in")) == ["Spring in Paris", "Summer in Rome"]
    assert len(index) == 2


def test_every_word_of_the_query_must_appear(index):
    index.apply(created(PARIS, ROME))

    assert index.search("paris rome") == []


def test_nested_string_values_are_searchable_but_ids_are_not(index):
    record = {"id": "secret42", "title": "Notes", "meta": {"tags": ["gardening", "roses"]}}
    index.apply(created(record))

    assert index.search("roses") == [record]
    assert index.search("secret42") == []


def test_an_update_replaces_the_indexed_words(index):
    index.apply(created(PARIS))
    renamed = {**PARIS, "title": "Autumn in Lyon", "last_modified": 3}

    index.apply(event("update", [{"new": renamed, "old": PARIS}]))

    assert index.search("lyon") == [renamed]
    assert index.search("paris") == []
    assert len(index) == 1


def test_an_update_of_a_record_never_seen_indexes_it(index):
    index.apply(event("update", [{"new": ROME, "old": {**ROME, "title": "Rome"}}]))

    assert index.search("summer") == [ROME]


def test_a_delete_with_only_the_old_record_removes_it(index):
    index.apply(created(PARIS, ROME))

    index.apply(event("delete", [{"old": PARIS}]))

    assert index.search("paris") == []
    assert index.search("rome") == [ROME]
    assert len(index) == 1


def test_a_delete_with_a_tombstone_as_new_removes_the_record(index):
    index.apply(created(PARIS))
    tombstone = {"id": "a1", "last_modified": 5, "deleted": True}

    index.apply(event("delete", [{"new": tombstone, "old": PARIS}]))

    assert index.search("paris") == []
    assert len(index) == 0


def test_deleting_a_record_never_indexed_is_harmless(index):
    index.apply(event("delete", [{"old": {"id": "ghost", "title": "Ghost"}}]))

    assert len(index) == 0


def test_changes_are_applied_in_their_order(index):
    recreated = {**PARIS, "title": "Paris again", "last_modified": 4}

    index.apply(
        event(
            "create",
            [
                {"new": PARIS},
                {"new": {"id": "a1", "deleted": True, "last_modified": 3}, "old": PARIS},
                {"new": recreated},
            ],
        )
    )

    assert index.search("paris") == [recreated]


def test_an_older_version_arriving_late_does_not_replace_a_newer_one(index):
    newer = {**PARIS, "title": "Autumn in Paris", "last_modified": 5}
    index.apply(event("update", [{"new": newer, "old": PARIS}]))

    index.apply(created(PARIS))

    assert index.search("paris") == [newer]


def test_a_create_arriving_after_its_delete_does_not_bring_the_record_back(index):
    index.apply(event("delete", [{"new": {"id": "a1", "deleted": True, "last_modified": 2}}]))

    index.apply(created(PARIS))

    assert index.search("paris") == []
    assert len(index) == 0


def test_delete_recreate_delete_ends_deleted_whichever_event_comes_first(index):
    # Kinto and notifier deliver [delete x, create x, delete x] as two events.
    deletes = event(
        "delete",
        [
            {"new": {"id": "a1", "deleted": True, "last_modified": 2}, "old": PARIS},
            {"new": {"id": "a1", "deleted": True, "last_modified": 4}},
        ],
    )
    recreate = created({**PARIS, "last_modified": 3})

    index.apply(deletes)
    index.apply(recreate)

    assert index.search("paris") == []


def test_a_record_created_again_after_its_delete_is_found(index):
    index.apply(created(PARIS))
    index.apply(event("delete", [{"new": {"id": "a1", "deleted": True, "last_modified": 2}}]))

    index.apply(created({**PARIS, "last_modified": 3}))

    assert titles(index.search("paris")) == ["Spring in Paris"]


def test_records_without_an_id_are_skipped(index):
    index.apply(created({"title": "No id here"}))

    assert len(index) == 0


@pytest.mark.parametrize(
    "query",
    [
        'paris"',
        '"paris',
        "paris AND",
        "OR paris",
        "NOT paris",
        "paris*",
        "NEAR(paris rome)",
        "title:paris",
        "^paris",
        "(paris",
        "paris -rome",
        "'; DROP TABLE records; --",
    ],
)
def test_a_query_with_fts_operators_or_quotes_does_not_raise(index, query):
    index.apply(created(PARIS, ROME))

    results = index.search(query)

    assert isinstance(results, list)
    assert len(index) == 2


def test_operator_words_are_searched_as_plain_words(index):
    record = {"id": "x", "title": "Cats AND dogs", "body": "NOT a NEAR miss"}
    index.apply(created(record))

    assert index.search("and") == [record]
    assert index.search("NOT NEAR") == [record]


@pytest.mark.parametrize("query", ["", "   ", "!!!", '""'])
def test_a_query_without_words_finds_nothing(index, query):
    index.apply(created(PARIS))

    assert index.search(query) == []


def test_records_of_different_parents_are_kept_apart(index):
    in_c1 = {"id": "r1", "title": "Same id, first collection"}
    in_c2 = {"id": "r1", "title": "Same id, second collection"}
    index.apply(created(in_c1, resource_name="record", bucket_id="b1", collection_id="c1"))
    index.apply(created(in_c2, resource_name="record", bucket_id="b1", collection_id="c2"))

    assert len(index) == 2
    assert titles(index.search("same id")) == [in_c1["title"], in_c2["title"]]

    index.apply(
        event(
            "delete", [{"old": in_c1}], resource_name="record", bucket_id="b1", collection_id="c1"
        )
    )

    assert index.search("same id") == [in_c2]


def test_a_record_updated_at_its_own_url_is_the_record_created_in_its_collection(index):
    record = {"id": "r1", "title": "Draft"}
    index.apply(created(record, resource_name="record", bucket_id="b1", collection_id="c1"))
    updated = {"id": "r1", "title": "Final"}

    index.apply(
        event(
            "update",
            [{"new": updated, "old": record}],
            resource_name="record",
            bucket_id="b1",
            collection_id="c1",
            record_id="r1",
        )
    )

    assert index.search("draft") == []
    assert index.search("final") == [updated]
    assert len(index) == 1


def test_records_of_different_resources_are_kept_apart(index):
    article = {"id": "1", "title": "Shared words"}
    comment = {"id": "1", "title": "Shared words too"}
    index.apply(created(article, resource_name="article"))
    index.apply(created(comment, resource_name="comment"))

    assert index.search("shared", resource_name="comment") == [comment]
    assert index.search("shared", resource_name="article") == [article]
    assert len(index) == 2


def test_the_index_survives_reopening(tmp_path):
    path = str(tmp_path / "search-index.sqlite3")
    SearchIndex(path).apply(created(PARIS))

    assert SearchIndex(path).search("paris") == [PARIS]


def test_threads_sharing_an_index_each_write_and_read_every_change(index):
    records = [{"id": f"t{n}", "title": f"thread {n} words", "last_modified": n} for n in range(8)]
    threads = [threading.Thread(target=index.apply, args=(created(r),)) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert titles(index.search("words")) == titles(records)


def test_readers_can_query_the_documented_schema_with_sql(index):
    index.apply(created(PARIS, ROME))

    with sqlite3.connect(index.path) as connection:
        rows = connection.execute(
            "SELECT r.record_id FROM records_fts JOIN records r ON r.id = records_fts.rowid "
            "WHERE records_fts MATCH ? ORDER BY rank",
            ('"rome"',),
        ).fetchall()
    connection.close()

    assert rows == [("a2",)]


# Reindexing from a storage snapshot


def stored(*records, bucket_id="b1", collection_id="c1"):
    """Records as a storage lists them for reindex: (parent, record) pairs."""
    return [({"bucket_id": bucket_id, "collection_id": collection_id}, r) for r in records]


def rows(index):
    with closing(sqlite3.connect(index.path)) as connection:
        return connection.execute(
            "SELECT resource_name, parent, record_id, last_modified, deleted FROM records "
            "ORDER BY resource_name, parent, record_id"
        ).fetchall()


def test_reindex_makes_the_index_hold_the_given_records_and_no_other(index):
    index.apply(created(PARIS, ROME))
    lyon = {"id": "a3", "title": "Autumn in Lyon", "last_modified": 3}

    count = index.reindex("article", [({}, PARIS), ({}, lyon)], as_of=10)

    assert count == 2
    assert titles(index.search("in")) == ["Autumn in Lyon", "Spring in Paris"]
    assert index.search("rome") == []
    assert len(index) == 2


def test_a_record_missing_from_the_storage_becomes_a_tombstone_at_as_of(index):
    index.apply(created(PARIS, ROME))

    index.reindex("article", [({}, PARIS)], as_of=10)

    assert rows(index) == [("article", "{}", "a1", 1, 0), ("article", "{}", "a2", 10, 1)]
    index.apply(created(ROME))
    assert index.search("rome") == [], "an older create arriving late does not bring it back"


def test_reindex_keeps_the_changes_newer_than_its_snapshot(index):
    updated = {**PARIS, "title": "Autumn in Paris", "last_modified": 50}
    born_later = {"id": "a9", "title": "Winter in Oslo", "last_modified": 45}
    index.apply(event("update", [{"new": updated, "old": PARIS}]))
    index.apply(created(born_later))

    index.reindex("article", [({}, PARIS)], as_of=40)

    assert index.search("paris") == [updated]
    assert index.search("oslo") == [born_later]


def test_reindex_does_not_bring_back_a_record_deleted_after_its_snapshot(index):
    index.apply(event("delete", [{"new": {"id": "a1", "deleted": True, "last_modified": 50}}]))

    index.reindex("article", [({}, PARIS)], as_of=40)

    assert index.search("paris") == []


def test_reindex_is_idempotent(index):
    snapshot = stored(PARIS, ROME)
    index.reindex("record", snapshot, as_of=10)
    first = rows(index)

    assert index.reindex("record", snapshot, as_of=10) == 2
    assert rows(index) == first


def test_reindex_writes_in_chunks_and_reports_each_one(index):
    records = [{"id": f"r{n}", "title": f"Note {n}", "last_modified": n} for n in range(5)]
    progress = []

    index.reindex("record", stored(*records), as_of=10, on_progress=progress.append, chunk=2)

    assert progress == [2, 2, 1]
    assert len(index) == 5


def test_reindex_of_nothing_reports_no_progress_and_tombstones_everything(index):
    index.apply(created(PARIS))
    progress = []

    assert index.reindex("article", [], as_of=10, on_progress=progress.append) == 0

    assert progress == []
    assert len(index) == 0


def test_reindex_leaves_the_other_resources_alone(index):
    comment = {"id": "c1", "title": "Nice trip to Paris", "last_modified": 1}
    index.apply(created(comment, resource_name="comment"))

    index.reindex("article", [({}, ROME)], as_of=10)

    assert index.search("paris") == [comment]


def test_reindex_keeps_records_of_different_parents_apart(index):
    index.apply(created(PARIS, resource_name="record", bucket_id="b1", collection_id="c1"))

    index.reindex("record", stored(PARIS, collection_id="c2"), as_of=10)

    assert [row[1:] for row in rows(index)] == [
        ('{"bucket_id": "b1", "collection_id": "c1"}', "a1", 10, 1),
        ('{"bucket_id": "b1", "collection_id": "c2"}', "a1", 1, 0),
    ]


def test_reindex_does_not_bring_back_records_under_a_parent_deleted_after_its_snapshot(index):
    in_c1 = {"resource_name": "record", "bucket_id": "b1", "collection_id": "c1"}
    index.apply(created({**PARIS, "last_modified": 30}, **in_c1))
    collection_delete = event(
        "delete",
        [{"new": {"id": "c1", "deleted": True, "last_modified": 50}}],
        resource_name="collection",
        bucket_id="b1",
        collection_id="c1",
    )
    index.apply(collection_delete, frozenset({"collection"}))

    index.reindex("record", stored({**PARIS, "last_modified": 30}), as_of=40)

    assert index.search("paris") == []


# Files written by earlier versions


def test_an_index_written_with_parents_as_lists_of_pairs_is_converted_when_opened(tmp_path):
    path = str(tmp_path / "search-index.sqlite3")
    in_c1 = {"resource_name": "record", "bucket_id": "b1", "collection_id": "c1"}
    SearchIndex(path).apply(created(PARIS, ROME, **in_c1))
    with closing(sqlite3.connect(path)) as connection, connection:
        # What the version before parent deletes wrote: json.dumps(parent_of(payload)).
        connection.execute(
            "UPDATE records SET parent = ?", ('[["bucket_id", "b1"], ["collection_id", "c1"]]',)
        )
        connection.execute("DROP TABLE drops")

    index = SearchIndex(path)

    assert {row[1] for row in rows(index)} == {'{"bucket_id": "b1", "collection_id": "c1"}'}
    renamed = {**PARIS, "title": "Autumn in Lyon", "last_modified": 3}
    index.apply(event("update", [{"new": renamed, "old": PARIS}], **in_c1))
    assert index.search("lyon") == [renamed]
    assert len(index) == 2, "the update replaced the converted row, not added one"
    collection_delete = event(
        "delete",
        [{"new": {"id": "c1", "deleted": True, "last_modified": 5}}],
        resource_name="collection",
        bucket_id="b1",
        collection_id="c1",
    )
    index.apply(collection_delete, frozenset({"collection"}))
    assert len(index) == 0


def test_an_old_index_of_records_without_a_parent_is_converted_too(tmp_path):
    path = str(tmp_path / "search-index.sqlite3")
    SearchIndex(path).apply(created(PARIS))
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE records SET parent = '[]'")

    index = SearchIndex(path)

    assert [row[1] for row in rows(index)] == ["{}"]
    index.apply(event("delete", [{"new": {"id": "a1", "deleted": True, "last_modified": 2}}]))
    assert len(index) == 0
