"""The example app (examples/articles.py) through WebTest: what it stores and what it publishes.

The publisher is the only fake, as in test_request: ``notifier.publisher.CeleryPublisher`` is
replaced before ``includeme`` builds it, so the app's real views, SQLite database, pyramid_tm
transactions and notifier's merging run. The tests marked ``WITH_AND_WITHOUT_THE_OUTBOX`` run
twice: the outbox (``notifier.outbox = true``) changes nothing in what is published.
"""

import configparser
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from webtest import TestApp

import notifier.outbox
from examples.articles import make_app, settings_from_environ
from tests.unit.fakes import RecordingPublisher


@pytest.fixture
def publisher(monkeypatch):
    recording = RecordingPublisher("memory://", 1)
    monkeypatch.setattr("notifier.publisher.CeleryPublisher", lambda *args: recording)
    return recording


@pytest.fixture
def threadless_outboxes(outboxes, publisher, monkeypatch):
    """The outboxes of a test's apps, without their threads: the publisher's ``take`` does
    their work."""
    monkeypatch.setattr(notifier.outbox.Outbox, "_ensure_thread", lambda self: None)
    publisher.outboxes = outboxes
    return outboxes


@pytest.fixture
def app(publisher, tmp_path, threadless_outboxes, request):
    settings = {
        "sqlalchemy.url": f"sqlite:///{tmp_path}/articles.sqlite3",
        "search.index": str(tmp_path / "index.sqlite3"),
    }
    if getattr(request, "param", None) == "with the outbox":
        settings["notifier.outbox"] = "true"
    return TestApp(make_app(settings))


WITH_AND_WITHOUT_THE_OUTBOX = pytest.mark.parametrize(
    "app", ["without the outbox", "with the outbox"], indirect=True
)


def records(message, state):
    return [record[state] for record in message.impacted_records]


# -- blogs --------------------------------------------------------------------------------------


def test_putting_a_new_blog_creates_it_and_publishes_a_create(app, publisher):
    response = app.put_json("/blogs/b1", {"title": "Notes"})

    assert response.status_code == 201
    blog = response.json["data"]
    assert blog == {"id": "b1", "title": "Notes", "last_modified": blog["last_modified"]}
    assert app.get("/blogs/b1").json["data"] == blog
    [message] = publisher.take()
    assert (message.resource_name, message.action) == ("blog", "create")
    assert message.payload["blog_id"] == "b1"
    assert message.payload["uri"] == "/blogs/b1"
    assert message.impacted_records == [{"new": blog}]


@WITH_AND_WITHOUT_THE_OUTBOX
def test_putting_an_existing_blog_replaces_it_and_publishes_an_update(app, publisher):
    old = app.put_json("/blogs/b1", {"title": "Notes"}).json["data"]
    publisher.take()

    response = app.put_json("/blogs/b1", {"title": "Journal"})

    assert response.status_code == 200
    new = response.json["data"]
    assert new["title"] == "Journal"
    assert new["last_modified"] > old["last_modified"]
    [message] = publisher.take()
    assert (message.resource_name, message.action) == ("blog", "update")
    assert message.impacted_records == [{"new": new, "old": old}]


@WITH_AND_WITHOUT_THE_OUTBOX
def test_deleting_a_blog_deletes_its_articles_with_one_event_for_the_blog_alone(app, publisher):
    blog = app.put_json("/blogs/b1", {"title": "Notes"}).json["data"]
    app.post_json("/blogs/b1/articles", {"id": "a1", "title": "One"})
    app.post_json("/blogs/b1/articles", {"id": "a2", "title": "Two"})
    outside = app.post_json("/articles", {"id": "a1", "title": "Outside any blog"}).json["data"]
    publisher.take()

    tombstone = app.delete("/blogs/b1").json["data"]

    assert tombstone == {"id": "b1", "last_modified": tombstone["last_modified"], "deleted": True}
    assert tombstone["last_modified"] > blog["last_modified"]
    [message] = publisher.take()
    assert (message.resource_name, message.action) == ("blog", "delete")
    assert message.payload["blog_id"] == "b1"
    assert message.payload["timestamp"] == tombstone["last_modified"]
    assert message.impacted_records == [{"new": tombstone, "old": blog}]
    app.get("/blogs/b1", status=404)
    app.get("/blogs/b1/articles/a1", status=404)
    assert app.get("/articles").json["data"] == [outside]


def test_a_blog_put_again_after_its_delete_has_no_articles(app):
    app.put_json("/blogs/b1", {"title": "Notes"})
    app.post_json("/blogs/b1/articles", {"id": "a1", "title": "One"})
    app.delete("/blogs/b1")

    app.put_json("/blogs/b1", {"title": "Notes again"})

    assert app.get("/blogs/b1/articles").json["data"] == []


def test_a_blog_needs_a_title(app, publisher):
    app.put_json("/blogs/b1", {"name": "Notes"}, status=400)

    app.get("/blogs/b1", status=404)
    assert publisher.take() == []


# -- articles in a blog -------------------------------------------------------------------------


@WITH_AND_WITHOUT_THE_OUTBOX
def test_an_article_in_a_blog_carries_the_blog_id_in_its_events(app, publisher):
    app.put_json("/blogs/b1", {"title": "Notes"})
    publisher.take()

    created = app.post_json("/blogs/b1/articles", {"id": "a1", "title": "One"}).json["data"]
    app.patch_json("/blogs/b1/articles/a1", {"body": "more"})
    app.delete("/blogs/b1/articles/a1")

    messages = publisher.take()
    assert [m.action for m in messages] == ["create", "update", "delete"]
    for message in messages:
        assert message.resource_name == "article"
        assert message.payload["blog_id"] == "b1"
        assert message.payload["article_id"] == "a1"
    assert messages[0].payload["uri"] == "/blogs/b1/articles"
    assert messages[1].payload["uri"] == "/blogs/b1/articles/a1"
    assert records(messages[0], "new") == [created]


def test_an_article_outside_any_blog_has_no_blog_id_in_its_events(app, publisher):
    app.post_json("/articles", {"id": "a1", "title": "One"})

    [message] = publisher.take()
    assert "blog_id" not in message.payload


def test_one_article_id_may_be_used_in_several_blogs_and_outside_them(app):
    app.put_json("/blogs/b1", {"title": "Notes"})
    app.put_json("/blogs/b2", {"title": "Journal"})

    for path in ("/blogs/b1/articles", "/blogs/b2/articles", "/articles"):
        app.post_json(path, {"id": "a1", "title": f"In {path}"})

    assert app.get("/blogs/b1/articles/a1").json["data"]["title"] == "In /blogs/b1/articles"
    assert app.get("/blogs/b2/articles/a1").json["data"]["title"] == "In /blogs/b2/articles"
    assert [a["title"] for a in app.get("/articles").json["data"]] == ["In /articles"]


def test_writing_an_article_into_a_missing_blog_is_not_found_and_publishes_nothing(app, publisher):
    app.post_json("/blogs/nowhere/articles", {"id": "a1", "title": "One"}, status=404)
    app.put_json("/blogs/nowhere/articles/a1", {"title": "One"}, status=404)
    app.get("/blogs/nowhere/articles", status=404)

    assert publisher.take() == []


@WITH_AND_WITHOUT_THE_OUTBOX
def test_an_article_id_taken_in_its_blog_is_a_conflict(app, publisher):
    app.put_json("/blogs/b1", {"title": "Notes"})
    app.post_json("/blogs/b1/articles", {"id": "a1", "title": "One"})
    publisher.take()

    app.post_json("/blogs/b1/articles", {"id": "a1", "title": "Again"}, status=409)

    assert publisher.take() == []
    assert app.get("/blogs/b1/articles/a1").json["data"]["title"] == "One"


# -- the clock ----------------------------------------------------------------------------------


def test_every_change_gets_a_greater_version_than_the_one_before(app):
    created = app.post_json("/articles", {"id": "a1", "title": "One"}).json["data"]
    updated = app.patch_json("/articles/a1", {"body": "more"}).json["data"]
    tombstone = app.delete("/articles/a1").json["data"]
    recreated = app.post_json("/articles", {"id": "a1", "title": "One again"}).json["data"]

    versions = [r["last_modified"] for r in (created, updated, tombstone, recreated)]
    assert versions == sorted(set(versions))


def test_a_tombstone_carries_its_own_version(app, publisher):
    created = app.post_json("/articles", {"id": "a1", "title": "One"}).json["data"]
    publisher.take()

    tombstone = app.delete("/articles/a1").json["data"]

    assert tombstone == {"id": "a1", "last_modified": tombstone["last_modified"], "deleted": True}
    assert tombstone["last_modified"] > created["last_modified"]
    [message] = publisher.take()
    assert message.impacted_records == [{"new": tombstone, "old": created}]


def test_the_clock_does_not_go_back_when_the_system_clock_does(app, monkeypatch):
    before = app.post_json("/articles", {"title": "One"}).json["data"]
    monkeypatch.setattr("examples.articles._now_ms", lambda: 1)

    after = app.post_json("/articles", {"title": "Two"}).json["data"]

    assert after["last_modified"] == before["last_modified"] + 1


# -- batch --------------------------------------------------------------------------------------


def test_a_batch_runs_its_requests_in_order_and_answers_each(app):
    app.put_json("/blogs/b1", {"title": "Notes"})

    response = app.post_json(
        "/batch",
        {
            "defaults": {"method": "POST", "path": "/blogs/b1/articles"},
            "requests": [
                {"body": {"id": "a1", "title": "One"}},
                {"body": {"id": "a2", "title": "Two"}},
                {"method": "GET", "path": "/blogs/b1/articles"},
            ],
        },
    )

    assert response.status_code == 200
    answers = response.json["responses"]
    assert [(a["status"], a["path"]) for a in answers] == [
        (201, "/blogs/b1/articles"),
        (201, "/blogs/b1/articles"),
        (200, "/blogs/b1/articles"),
    ]
    assert [a["title"] for a in answers[2]["body"]["data"]] == ["One", "Two"]


@WITH_AND_WITHOUT_THE_OUTBOX
def test_a_batch_publishes_its_changes_merged_with_their_positions(app, publisher):
    app.put_json("/blogs/b1", {"title": "Notes"})
    app.post_json("/blogs/b1/articles", {"id": "x", "title": "First"})
    publisher.take()

    answers = app.post_json(
        "/batch",
        {
            "requests": [
                {"method": "DELETE", "path": "/blogs/b1/articles/x"},
                {"method": "POST", "path": "/blogs/b1/articles", "body": {"id": "x", "title": "2"}},
                {"method": "DELETE", "path": "/blogs/b1/articles/x"},
            ]
        },
    ).json["responses"]

    first_tombstone, recreated, second_tombstone = (a["body"]["data"] for a in answers)
    assert (
        first_tombstone["last_modified"]
        < recreated["last_modified"]
        < second_tombstone["last_modified"]
    )
    deletes, creates = publisher.take()
    assert (deletes.action, creates.action) == ("delete", "create")
    assert deletes.payload["blog_id"] == creates.payload["blog_id"] == "b1"
    assert records(deletes, "new") == [first_tombstone, second_tombstone]
    assert deletes.positions == [0, 2]
    assert records(creates, "new") == [recreated]
    assert creates.positions == [1]


@WITH_AND_WITHOUT_THE_OUTBOX
def test_a_batch_with_a_failing_request_stores_and_publishes_nothing(app, publisher):
    app.put_json("/blogs/b1", {"title": "Notes"})
    publisher.take()

    response = app.post_json(
        "/batch",
        {
            "requests": [
                {"method": "POST", "path": "/blogs/b1/articles", "body": {"title": "Kept?"}},
                {"method": "DELETE", "path": "/blogs/b1"},
                {"method": "PUT", "path": "/blogs/gone/articles/a1", "body": {"title": "404"}},
                {"method": "POST", "path": "/articles", "body": {"title": "never run"}},
            ]
        },
        status=404,
    )

    assert response.json["index"] == 2
    assert response.json["response"]["status"] == 404
    assert response.json["response"]["path"] == "/blogs/gone/articles/a1"
    assert publisher.take() == []
    assert app.get("/blogs/b1").json["data"]["title"] == "Notes"
    assert app.get("/blogs/b1/articles").json["data"] == []
    assert app.get("/articles").json["data"] == []


def test_a_batch_whose_request_is_invalid_answers_with_that_requests_status(app, publisher):
    response = app.post_json(
        "/batch",
        {
            "requests": [
                {"method": "POST", "path": "/articles", "body": {"title": "One"}},
                {"method": "POST", "path": "/articles", "body": {"body": "no title"}},
            ]
        },
        status=400,
    )

    assert response.json["index"] == 1
    assert response.json["response"]["body"] == {"error": "an article needs a title"}
    assert app.get("/articles").json["data"] == []
    assert publisher.take() == []


def test_a_batch_of_more_than_25_requests_is_refused_before_any_runs(app, publisher):
    requests = [{"method": "POST", "path": "/articles", "body": {"title": "t"}}] * 26

    app.post_json("/batch", {"requests": requests}, status=400)

    assert app.get("/articles").json["data"] == []
    assert publisher.take() == []


def test_a_batch_request_to_an_unknown_path_answers_404_in_json(app):
    response = app.post_json(
        "/batch", {"requests": [{"method": "GET", "path": "/nowhere"}]}, status=404
    )

    assert response.json["response"]["body"]["code"] == "404 Not Found"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"requests": []},
        {"requests": ["GET /articles"]},
        {"requests": [{"method": "GET", "path": "/batch"}]},
        {"requests": [{"method": "OPTIONS", "path": "/articles"}]},
    ],
)
def test_a_malformed_batch_is_a_bad_request(app, body):
    app.post_json("/batch", body, status=400)


# -- databases of the app before blogs ----------------------------------------------------------


def test_articles_of_a_database_from_before_blogs_are_kept_outside_any_blog(publisher, tmp_path):
    path = tmp_path / "articles.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE articles (id VARCHAR(64) PRIMARY KEY, title TEXT, body TEXT, "
            "last_modified BIGINT)"
        )
        connection.execute("INSERT INTO articles VALUES ('a1', 'Old', '', 1700000000000)")
    connection.close()

    app = TestApp(make_app({"sqlalchemy.url": f"sqlite:///{path}", "search.index": "unused"}))

    assert app.get("/articles/a1").json["data"]["title"] == "Old"
    updated = app.patch_json("/articles/a1", {"title": "Still there"}).json["data"]
    assert updated["last_modified"] > 1700000000000


# -- the outbox ---------------------------------------------------------------------------------


@pytest.mark.parametrize("app", ["with the outbox"], indirect=True)
def test_with_the_outbox_each_message_is_committed_in_the_database_before_it_is_published(
    app, publisher, tmp_path, monkeypatch
):
    publish = publisher.publish
    committed = []

    def look_then_publish(message, queue):
        with closing(sqlite3.connect(tmp_path / "articles.sqlite3")) as connection:
            row = connection.execute(
                "SELECT queue FROM notifier_outbox WHERE task_id = ?", (message.task_id,)
            ).fetchone()
        committed.append(row == (queue,))
        publish(message, queue)

    (outbox,) = publisher.outboxes  # what publishes, with the outbox
    monkeypatch.setattr(outbox, "publish", look_then_publish)

    app.put_json("/blogs/b1", {"title": "Notes"})
    app.post_json("/batch", {"requests": [{"method": "DELETE", "path": "/blogs/b1"}]})

    assert [m.action for m in publisher.take()] == ["create", "delete"]
    assert committed == [True, True]


def test_a_command_line_run_has_the_outbox_in_the_apps_database(
    publisher, threadless_outboxes, tmp_path, monkeypatch
):
    outboxes = threadless_outboxes
    for variable in ("ARTICLES_DATABASE_URL", "NOTIFIER_SEARCH_INDEX", "NOTIFIER_OUTBOX"):
        monkeypatch.delenv(variable, raising=False)
    settings = settings_from_environ(str(tmp_path))

    app = TestApp(make_app(settings))
    app.post_json("/articles", {"id": "a1", "title": "One"})

    assert settings["notifier.outbox"] == "true"
    assert [str(outbox.engine.url) for outbox in outboxes] == [settings["sqlalchemy.url"]]
    assert [m.payload["article_id"] for m in publisher.take()] == ["a1"]


def test_a_command_line_run_without_the_outbox_when_the_environment_says_so(
    publisher, outboxes, tmp_path, monkeypatch
):
    monkeypatch.setenv("ARTICLES_DATABASE_URL", f"sqlite:///{tmp_path}/articles.sqlite3")
    monkeypatch.setenv("NOTIFIER_OUTBOX", "false")

    make_app(settings_from_environ(str(tmp_path)))

    assert outboxes == []
    with closing(sqlite3.connect(tmp_path / "articles.sqlite3")) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    assert "articles" in tables
    assert "notifier_outbox" not in tables


def test_the_ini_file_turns_the_outbox_on():
    ini = configparser.ConfigParser()
    ini.read(Path(__file__).parents[2] / "examples" / "articles.ini")

    assert ini["app:main"]["notifier.outbox"] == "true"
