"""The reindex command rebuilds the search index from the example app's database."""

import sqlite3

import pytest
from webtest import TestApp

from examples import reindex
from examples.articles import make_app
from tasks.builtin.search_index import SearchIndex
from tasks.listeners.event import Event
from tests.unit.test_example_app import RecordingPublisher


@pytest.fixture
def paths(tmp_path):
    return {"database": f"sqlite:///{tmp_path}/articles.sqlite3", "index": tmp_path / "index"}


@pytest.fixture
def articles(monkeypatch, paths):
    recording = RecordingPublisher("memory://", 1)
    monkeypatch.setattr("notifier.publisher.CeleryPublisher", lambda *args: recording)
    settings = {"sqlalchemy.url": paths["database"], "search.index": str(paths["index"])}
    return TestApp(make_app(settings))


def indexed(path):
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT parent, record_id, json_extract(record, '$.title') FROM records "
            "WHERE NOT deleted ORDER BY parent, record_id"
        )
        return rows.fetchall()


def event(action, record):
    payload = {
        "timestamp": record["last_modified"],
        "action": action,
        "uri": "/articles",
        "user_id": None,
        "resource_name": "article",
    }
    return Event(
        event_id="e",
        request_id="r",
        resource_name="article",
        action=action,
        payload=payload,
        impacted_records=[{"new": record}],
        positions=[0],
    )


def test_reindexing_an_empty_index_fills_it_with_every_article(articles, paths, capsys):
    articles.put_json("/blogs/b1", {"title": "Notes"})
    articles.post_json("/blogs/b1/articles", {"id": "x", "title": "in a blog"})
    articles.post_json("/articles", {"id": "y", "title": "on its own"})

    assert reindex.main(["--database", paths["database"], "--index", str(paths["index"])]) == 0

    assert sorted(indexed(paths["index"])) == [
        ('{"blog_id": "b1"}', "x", "in a blog"),
        ("{}", "y", "on its own"),
    ]
    output = capsys.readouterr()
    assert "2 articles indexed" in output.out
    assert "reindexing" in output.err  # the progress bar
    assert "2/2" in output.err


def test_reindexing_forgets_what_the_database_lost_and_keeps_newer_changes(articles, paths):
    x = articles.post_json("/articles", {"id": "x", "title": "kept"}).json["data"]
    gone = articles.post_json("/articles", {"id": "gone", "title": "lost"}).json["data"]
    index = SearchIndex(str(paths["index"]))
    # The index drifted: it missed the delete of "gone", and it already has a change of "late"
    # made after the snapshot the reindex reads (a version above the database's clock).
    index.apply(event("create", gone))
    articles.delete("/articles/gone")
    late = {"id": "late", "title": "newer", "body": "", "last_modified": x["last_modified"] + 10**6}
    index.apply(event("create", late))

    reindex.main(["--database", paths["database"], "--index", str(paths["index"])])

    assert [row[1] for row in indexed(paths["index"])] == ["late", "x"]
    assert index.search("lost") == []
