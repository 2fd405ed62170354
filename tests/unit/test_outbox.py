"""notifier.outbox: messages commit with the data, and a relay publishes what was not.

Through the example app (examples/articles.py, on SQLite, with ``notifier.outbox = true``), whose
publisher is the only fake, as in test_example_app: what the broker received, in what order,
and what the ``notifier_outbox`` table holds. Then :class:`Outbox` directly, for what processes
that died left behind and for relays that run at once, and the ``notifier-outbox`` command.

Most tests have no relay thread (``notifier.outbox_relay = false``): they call ``relay()``
themselves. The tests named after the relay thread let it run.
"""

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from collections import Counter
from uuid import uuid4

import pytest
import sqlalchemy as sa
from pyramid.config import Configurator
from sqlalchemy.orm import Session
from webtest import TestApp

from examples.articles import make_app
from examples.processes import wait_until
from notifier.errors import ConfigurationError, OutboxError
from notifier.outbox import TABLE, Outbox, create_table, main
from notifier.wire.message import encode

# -- the broker, the database, the app ----------------------------------------------------------


class Broker:
    """Stands in for CeleryPublisher: keeps the messages it took, in order, and refuses every
    message while it is down."""

    def __init__(self, broker_url="memory://", timeout=1, *, delay=0.0):
        self.down = False
        self.down_after = None  # how many messages it takes before it goes down
        self.delay = delay  # seconds per message: relays that run at once overlap
        self.messages = []
        self.lock = threading.Lock()

    def publish(self, message, queue):
        if self.down:
            raise ConnectionError("Error 111 connecting to the broker. Connection refused.")
        time.sleep(self.delay)
        with self.lock:
            self.messages.append(message)
            if self.down_after is not None:
                self.down_after -= 1
                self.down = self.down_after <= 0

    def close(self):
        pass

    def titles(self):
        """The title of each article whose message the broker took, in the order it took them."""
        return [title_of(message.as_dict()) for message in self.messages]


def title_of(message):
    [change] = message["impacted_records"]
    return change["new"]["title"]


@pytest.fixture
def broker(monkeypatch):
    broker = Broker()
    monkeypatch.setattr("notifier.publisher.CeleryPublisher", lambda *args: broker)
    return broker


@pytest.fixture
def database(tmp_path):
    return tmp_path / "articles.sqlite3"


@pytest.fixture
def url(database):
    return f"sqlite:///{database}"


def rows(database):
    """The titles of the articles whose messages the outbox table holds, oldest first."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        found = connection.execute(f"SELECT message FROM {TABLE} ORDER BY id").fetchall()
    return [title_of(json.loads(text)) for (text,) in found]


@pytest.fixture
def start_app(url, tmp_path, monkeypatch, outboxes):
    """``start_app(relay_thread=False, **settings)``: the example app with the outbox, and the
    outbox it publishes through (to the fake ``broker``, when the test asks for it)."""

    def start_app(*, relay_thread=False, **settings):
        if not relay_thread:
            # The outbox starts its thread at start-up, and again after a fork at its first
            # message: here the test is the relay.
            monkeypatch.setattr(Outbox, "_ensure_thread", lambda self: None)
        app = TestApp(
            make_app(
                {
                    "sqlalchemy.url": url,
                    "search.index": str(tmp_path / "index.sqlite3"),
                    # Refused at once, never a Redis of the machine (nor Celery's in-memory
                    # broker, which every test of this process shares).
                    "notifier.broker_url": "redis://127.0.0.1:1/0",
                    "notifier.outbox": "true",
                    **settings,
                }
            )
        )
        return app, outboxes[-1]

    return start_app


def post(app, title, **kwargs):
    return app.post_json("/articles", {"id": title, "title": title}, **kwargs)


def article_message(title):
    payload = {
        "resource_name": "article",
        "action": "create",
        "uri": "/articles",
        "timestamp": 1700000000000,
        "user_id": "",
        "article_id": title,
    }
    return encode(payload, [{"new": {"id": title, "title": title}}], [0], request_id=uuid4().hex)


def refuse(message, queue):
    raise ConnectionError("a process that died publishes nothing")


def leave_rows(url, titles, *, age):
    """Rows that a web process committed ``age`` seconds ago, and died before publishing."""
    create_table(url)  # as its app did
    engine = sa.create_engine(url)
    messages = [article_message(title) for title in titles]
    with Session(engine) as session:
        dead = Outbox(engine, refuse, lambda request: contextlib.nullcontext(session))
        dead.write(None, [(message, "notifier") for message in messages])
        session.execute(
            sa.text(f"UPDATE {TABLE} SET created = :created WHERE task_id IN :task_ids").bindparams(
                sa.bindparam("task_ids", expanding=True)
            ),
            {"created": time.time() - age, "task_ids": [m.task_id for m in messages]},
        )
        session.commit()
    engine.dispose()


# -- a committed write --------------------------------------------------------------------------


def test_a_committed_write_is_handed_to_the_outbox_thread_which_publishes_it_and_deletes_its_row(
    start_app, database, broker
):
    app, outbox = start_app()

    post(app, "One", status=201)

    assert broker.titles() == []  # the request did not wait for the broker
    assert rows(database) == ["One"]
    assert outbox.publish_pending() == 1  # what the thread does at once
    assert broker.titles() == ["One"]
    assert outbox.relay() == 0  # nothing to publish again; the row is deleted
    assert rows(database) == []
    assert broker.titles() == ["One"]


def test_the_relay_thread_deletes_the_row_of_a_published_write_which_is_never_published_again(
    start_app, database, broker
):
    app, _ = start_app(relay_thread=True, **{"notifier.outbox_relay_after": "0.5"})

    post(app, "One", status=201)

    wait_until(lambda: rows(database) == [], 5, "the relay thread deleting the row")
    time.sleep(1.0)  # past relay_after, and a round of the thread
    assert broker.titles() == ["One"]


def test_without_a_relay_thread_a_published_write_leaves_no_row_for_a_standalone_relay(
    start_app, url, database, broker
):
    # relay_thread=True: the outbox's thread as it is; the setting says it relays no other
    # process's rows.
    app, _ = start_app(relay_thread=True, **{"notifier.outbox_relay": "false"})

    post(app, "One", status=201)

    wait_until(lambda: rows(database) == [], 3, "the row of the published write deleted")
    time.sleep(0.6)
    main(["relay", "--url", url, "--once", "--relay-after", "0.5", "--broker-url", "memory://"])
    assert broker.titles() == ["One"]


def test_the_outbox_and_the_article_are_in_one_database(start_app, database):
    app, _ = start_app()

    post(app, "One")

    with contextlib.closing(sqlite3.connect(database)) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    assert {"articles", TABLE} <= tables


# -- what rolls back ----------------------------------------------------------------------------


def test_a_rolled_back_batch_writes_no_row_and_publishes_nothing(start_app, database, broker):
    app, outbox = start_app()

    app.post_json(
        "/batch",
        {
            "requests": [
                {"method": "POST", "path": "/articles", "body": {"title": "Rolled back"}},
                {"method": "PUT", "path": "/blogs/gone/articles/a1", "body": {"title": "404"}},
            ]
        },
        status=404,
    )

    assert rows(database) == []
    assert outbox.relay(everything=True) == 0
    assert broker.titles() == []
    assert app.get("/articles").json["data"] == []


def refuse_the_article(database, title):
    """Have the database refuse to store an article titled ``title``, as a constraint would."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON articles WHEN NEW.title = '{title}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the database'); END"
        )
        connection.commit()


def test_a_write_that_the_database_refuses_leaves_no_row_and_publishes_nothing(
    start_app, database, broker
):
    app, outbox = start_app()
    refuse_the_article(database, "Refused")

    with contextlib.suppress(OutboxError):  # see the next test
        post(app, "Refused", expect_errors=True)

    assert rows(database) == []
    assert outbox.relay(everything=True) == 0
    assert broker.titles() == []
    assert app.get("/articles").json["data"] == []


def test_a_write_that_the_database_refuses_gets_the_apps_answer_with_the_outbox_too(
    start_app, database
):
    app, _ = start_app()
    refuse_the_article(database, "Refused")

    response = post(app, "Refused", status=409)  # the app's answer to an IntegrityError

    assert response.json == {"error": "an article with this id exists already"}


def test_a_write_whose_outbox_row_cannot_be_written_fails_and_stores_nothing(
    start_app, database, broker
):
    app, _ = start_app()
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute(f"DROP TABLE {TABLE}")

    with pytest.raises(OutboxError, match="could not write 1 messages to the outbox"):
        post(app, "Lost")

    assert app.get("/articles").json["data"] == []
    assert broker.titles() == []
    create_table(f"sqlite:///{database}")
    assert rows(database) == []


# -- a broker that is down ----------------------------------------------------------------------


def test_with_the_broker_down_a_write_answers_at_once_and_its_row_waits(
    start_app, database, broker, caplog
):
    app, outbox = start_app()
    broker.down = True

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="notifier"):
        post(app, "One", status=201)
        assert time.monotonic() - started < 1.0
        assert outbox.publish_pending() == 0

    assert rows(database) == ["One"]
    assert app.get("/articles/One").json["data"]["title"] == "One"
    assert broker.titles() == []
    assert "could not publish event " in caplog.text
    assert "(create article /articles, 1 records) to queue notifier" in caplog.text
    assert "left in the outbox, its relay publishes it" in caplog.text
    assert outbox.relay() == 0  # the broker is still down: the row stays
    assert rows(database) == ["One"]


def test_writes_after_one_the_broker_refused_queue_behind_it_even_once_the_broker_is_back(
    start_app, database, broker
):
    app, outbox = start_app()
    broker.down = True
    post(app, "One")
    post(app, "Two")
    outbox.publish_pending()
    broker.down = False

    post(app, "Three", status=201)
    outbox.publish_pending()

    assert broker.titles() == []  # not ahead of One and Two
    assert rows(database) == ["One", "Two", "Three"]
    assert outbox.relay() == 3
    assert broker.titles() == ["One", "Two", "Three"]
    assert rows(database) == []
    post(app, "Four")  # nothing waits any more: published at once
    assert outbox.publish_pending() == 1
    assert broker.titles() == ["One", "Two", "Three", "Four"]


def test_the_relay_stops_at_the_first_message_the_broker_refuses_and_keeps_the_rest_in_order(
    start_app, database, broker
):
    app, outbox = start_app()
    broker.down = True
    for title in ("One", "Two", "Three"):
        post(app, title)
    broker.down, broker.down_after = False, 1

    assert outbox.relay() == 1
    assert rows(database) == ["Two", "Three"]
    broker.down, broker.down_after = False, None
    assert outbox.relay() == 2
    assert broker.titles() == ["One", "Two", "Three"]
    assert rows(database) == []


def test_the_relay_thread_publishes_what_the_broker_refused_in_commit_order_once_it_is_back(
    start_app, database, broker, caplog
):
    app, _ = start_app(relay_thread=True)
    broker.down = True
    with caplog.at_level(logging.WARNING, logger="notifier"):
        for title in ("One", "Two", "Three"):
            post(app, title, status=201)
        # The thread tries them once the writes answered: the first meets the broker down,
        # the others wait behind it.
        wait_until(lambda: "could not publish" in caplog.text, 5, "the broker refusing One")
        assert broker.titles() == []

        broker.down = False
        wait_until(lambda: rows(database) == [], 10, "the relay emptying the outbox")

    assert broker.titles() == ["One", "Two", "Three"]
    assert "left in the outbox, its relay publishes it" in caplog.text


def test_with_a_hung_broker_a_write_answers_within_the_publish_timeout_and_its_row_waits(
    start_app, database
):
    # The real CeleryPublisher, to a broker that never answers.
    with socket.socket() as hung:  # accepts connections, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        app, _ = start_app(
            **{
                "notifier.broker_url": f"redis://127.0.0.1:{hung.getsockname()[1]}/0",
                "notifier.publish_timeout": "0.3",
            }
        )

        started = time.monotonic()
        post(app, "One", status=201)
        elapsed = time.monotonic() - started

    assert elapsed < 1.5
    assert rows(database) == ["One"]


# -- what a process that died left --------------------------------------------------------------


def test_rows_a_dead_process_left_are_published_by_another_relay_after_relay_after_oldest_first(
    start_app, url, database, broker
):
    leave_rows(url, ["Oldest", "Older"], age=30)
    leave_rows(url, ["Recent"], age=5)
    _, outbox = start_app(**{"notifier.outbox_relay_after": "10"})

    assert outbox.relay() == 2

    assert broker.titles() == ["Oldest", "Older"]
    assert rows(database) == ["Recent"]  # its process may still be publishing it
    leave_rows(url, ["Newest"], age=0)
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(f"UPDATE {TABLE} SET created = created - 6")  # 6 s later
    assert outbox.relay() == 1
    assert broker.titles() == ["Oldest", "Older", "Recent"]
    assert rows(database) == ["Newest"]


def test_a_process_that_starts_publishes_with_its_relay_thread_what_a_dead_one_left(
    start_app, url, database, broker
):
    leave_rows(url, ["One", "Two"], age=60)

    start_app(relay_thread=True)

    wait_until(lambda: rows(database) == [], 10, "the relay thread emptying the outbox")
    assert broker.titles() == ["One", "Two"]


def test_two_relays_at_once_on_one_sqlite_database_publish_every_row_once(url, database):
    create_table(url)
    titles = [f"article {n}" for n in range(200)]
    leave_rows(url, titles, age=60)
    broker = Broker(delay=0.0005)
    engines = [sa.create_engine(url) for _ in range(2)]
    relays = [Outbox(engine, broker.publish, relay_after=10, batch=7) for engine in engines]
    start = threading.Barrier(len(relays))
    published = []

    def run(relay):
        start.wait()
        published.append(relay.relay())

    threads = [threading.Thread(target=run, args=(relay,)) for relay in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for engine in engines:
        engine.dispose()

    counts = Counter(broker.titles())
    assert [title for title, count in counts.items() if count > 1] == []
    assert set(counts) == set(titles)
    assert sum(published) == len(titles)
    assert rows(database) == []


# -- SQLite's write lock, which the app's requests hold ------------------------------------------


def committed(url, titles):
    """The messages of rows of ``titles`` that a request of this process just committed: what
    its subscriber submits."""
    create_table(url)
    outgoing = [(article_message(title), "notifier") for title in titles]
    engine = sa.create_engine(url)
    with Session(engine) as session:
        writer = Outbox(engine, refuse, lambda request: contextlib.nullcontext(session))
        writer.write(None, outgoing)
        session.commit()
    engine.dispose()
    return outgoing


@contextlib.contextmanager
def write_lock(database):
    """SQLite's write lock on ``database``, held by another connection, as a request's
    transaction holds it from its first write to its commit."""
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("COMMIT")


@pytest.fixture
def relay_thread(url):
    """``relay_thread(**options)``: an outbox of this process on ``url`` with its thread
    running, and the broker it publishes to; stopped after the test."""
    made = []

    def relay_thread(**options):
        broker = Broker()
        made.append(Outbox(sa.create_engine(url), broker.publish, **options))
        made[-1].start()
        return made[-1], broker

    yield relay_thread
    for outbox in made:
        outbox.stop()
        outbox.engine.dispose()


def test_a_delete_that_finds_the_database_locked_does_not_hold_back_the_next_publish(
    url, database, relay_thread
):
    first, second = committed(url, ["One"]), committed(url, ["Two"])
    outbox, broker = relay_thread()

    with write_lock(database):
        outbox.submit(first)
        wait_until(lambda: broker.titles() == ["One"], 2, "One published")
        time.sleep(0.4)  # the thread tried to delete its row, and met the request's lock
        outbox.submit(second)
        wait_until(lambda: broker.titles() == ["One", "Two"], 1, "Two published meanwhile")
        assert rows(database) == ["One", "Two"]  # kept until deleted

    wait_until(lambda: rows(database) == [], 2, "the rows deleted once the lock is free")
    assert broker.titles() == ["One", "Two"]


def test_published_rows_are_deleted_before_relay_after_even_while_requests_keep_the_lock_busy(
    url, database, relay_thread, monkeypatch
):
    # After the first try, the thread would not try again without waiting for a while: what
    # deletes the rows is its delete that waits, half relay_after after their commit.
    monkeypatch.setattr("notifier.outbox.deleting.DELETE_EVERY", 30.0)
    outgoing = committed(url, ["One", "Two"])
    outbox, broker = relay_thread(relay_after=2.0)
    held, done = threading.Event(), threading.Event()

    def requests():  # the lock held nine tenths of the time
        while not done.is_set():
            with write_lock(database):
                held.set()
                time.sleep(0.3)
            time.sleep(0.03)

    busy = threading.Thread(target=requests)
    busy.start()
    try:
        held.wait(2)
        outbox.submit(outgoing)
        wait_until(lambda: rows(database) == [], 1.8, "the published rows deleted")
    finally:
        done.set()
        busy.join(5)

    time.sleep(0.5)  # past relay_after: another process's relay finds nothing to publish again
    other = Outbox(sa.create_engine(url), broker.publish, relay_after=2.0)
    assert other.relay() == 0
    assert broker.titles() == ["One", "Two"]
    other.engine.dispose()


def test_a_relay_pass_that_finds_nothing_due_takes_no_write_lock(url, database):
    leave_rows(url, ["Recent"], age=0)
    engine = sa.create_engine(url, connect_args={"timeout": 0.5})
    outbox = Outbox(engine, Broker().publish, relay_after=10)

    with write_lock(database):
        started = time.monotonic()
        assert outbox.relay() == 0
        assert time.monotonic() - started < 0.4  # it did not wait for the request's lock

    assert rows(database) == ["Recent"]
    engine.dispose()


def test_the_relay_thread_warns_only_of_the_messages_it_held_not_of_those_it_published_as_submitted(
    url, database, relay_thread, caplog
):
    leave_rows(url, ["Left"], age=60)
    first, second = committed(url, ["One"]), committed(url, ["Two"])

    with caplog.at_level(logging.WARNING, logger="notifier"):
        outbox, broker = relay_thread(retry=0.1)
        with write_lock(database):  # the thread's delete meets a request's write
            outbox.submit(first)
            wait_until(lambda: "One" in broker.titles(), 2, "One published")
            outbox.submit(second)
            time.sleep(0.3)
        wait_until(lambda: rows(database) == [], 3, "the outbox emptied")
        time.sleep(0.3)  # more relay passes

    assert sorted(broker.titles()) == ["Left", "One", "Two"]
    held = [r.getMessage() for r in caplog.records if "messages it held" in r.getMessage()]
    assert held == ["outbox: published 1 messages it held"]


# -- start-up -----------------------------------------------------------------------------------


def include_notifier(settings):
    """Start a Pyramid app that includes pyramid_tm and notifier with ``settings``."""
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("notifier")
    return config.make_wsgi_app()


def test_a_missing_outbox_table_fails_at_start_up_naming_the_command_that_creates_it(
    broker, url, outboxes
):
    with pytest.raises(ConfigurationError, match="notifier-outbox create --url") as error:
        include_notifier({"sqlalchemy.url": url, "notifier.outbox": "true"})

    assert error.value.key == "sqlalchemy.url"
    assert url in str(error.value)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"notifier.outbox_relay_after": "0"}, "notifier.outbox_relay_after"),
        ({"notifier.outbox_relay_after": "abc"}, "notifier.outbox_relay_after"),
        ({"notifier.outbox_relay_after": "4000"}, "notifier.outbox_relay_after"),
        ({"notifier.outbox_relay": "sometimes"}, "notifier.outbox_relay"),
        ({"notifier.outbox_url": "mysql://user@localhost/app"}, "notifier.outbox_url"),
        ({"notifier.outbox_session": "db session"}, "notifier.outbox_session"),
        ({"notifier.outbox_session": "tests.unit.nowhere.session"}, "notifier.outbox_session"),
        ({"sqlalchemy.url": None}, "sqlalchemy.url"),
    ],
)
def test_a_bad_outbox_setting_fails_at_start_up_naming_its_key(
    broker, url, outboxes, settings, key
):
    create_table(url)
    given = {"sqlalchemy.url": url, "notifier.outbox": "true", **settings}

    with pytest.raises(ConfigurationError) as error:
        include_notifier({name: value for name, value in given.items() if value is not None})

    assert error.value.key == key
    assert str(error.value).startswith(key)
    assert outboxes == []


def test_the_outbox_url_setting_puts_the_outbox_in_another_database(
    broker, url, tmp_path, outboxes
):
    other = f"sqlite:///{tmp_path}/outbox.sqlite3"
    create_table(other)
    settings = {"notifier.outbox": "true", "notifier.outbox_relay": "false"}

    include_notifier({"sqlalchemy.url": url, "notifier.outbox_url": other, **settings})

    assert [str(outbox.engine.url) for outbox in outboxes] == [other]
    with pytest.raises(ConfigurationError, match="notifier-outbox create") as error:
        include_notifier({"sqlalchemy.url": other, "notifier.outbox_url": url, **settings})
    assert error.value.key == "notifier.outbox_url"


# -- the notifier-outbox command ----------------------------------------------------------------


def test_the_create_command_makes_the_table_and_does_nothing_the_second_time(url, database, capsys):
    assert main(["create", "--url", url]) == 0
    assert main(["create", "--url", url]) == 0

    assert rows(database) == []
    assert capsys.readouterr().out.splitlines() == [f"{TABLE}: ready in {url}"] * 2


def test_the_status_command_prints_how_many_messages_the_outbox_holds(url, capsys):
    main(["create", "--url", url])
    capsys.readouterr()
    assert main(["status", "--url", url]) == 0
    assert capsys.readouterr().out == f"0 messages in {TABLE}\n"

    leave_rows(url, ["One", "Two"], age=30)

    assert main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"2 messages in {TABLE}, the oldest 30.")
    assert out.endswith(" s old\n")


def test_a_command_on_a_database_without_the_table_says_to_create_it(url, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["status", "--url", url])

    assert exit.value.code == 2
    assert "run notifier-outbox create" in capsys.readouterr().err


def test_the_relay_command_publishes_what_was_left_and_exits_0_when_nothing_is_left(
    broker, url, database, capsys
):
    main(["create", "--url", url])
    leave_rows(url, ["One", "Two"], age=30)
    leave_rows(url, ["Recent"], age=0)
    capsys.readouterr()

    code = main(["relay", "--url", url, "--once", "--broker-url", "memory://"])

    assert code == 0
    assert broker.titles() == ["One", "Two"]
    assert rows(database) == ["Recent"]
    assert capsys.readouterr().out.splitlines() == [
        "published 2 messages",
        f"0 messages older than 10 s left in {TABLE}",
    ]


def test_the_relay_command_exits_1_when_the_broker_leaves_messages_in_the_outbox(
    broker, url, database, capsys
):
    main(["create", "--url", url])
    leave_rows(url, ["One", "Two"], age=30)
    broker.down = True
    capsys.readouterr()

    code = main(["relay", "--url", url, "--once", "--broker-url", "memory://"])

    assert code == 1
    assert rows(database) == ["One", "Two"]
    assert capsys.readouterr().out == f"2 messages older than 10 s left in {TABLE}\n"


def test_rows_that_are_not_messages_are_kept_logged_once_and_do_not_stop_the_relay(
    url, database, caplog
):
    leave_rows(url, ["First"], age=60)
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        for n in range(3):
            connection.execute(
                f"INSERT INTO {TABLE} (task_id, queue, message, created) VALUES (?, ?, ?, 0)",
                (f"broken-{n}", "notifier", "{not json"),
            )
    leave_rows(url, ["Last"], age=60)
    broker = Broker()
    engine = sa.create_engine(url)
    outbox = Outbox(engine, broker.publish, relay_after=10, batch=2)

    with caplog.at_level(logging.CRITICAL, logger="notifier"):
        assert outbox.relay() == 2
        assert outbox.relay() == 0

    assert broker.titles() == ["First", "Last"]
    assert sorted(rows_ids(database)) == ["broken-0", "broken-1", "broken-2"]
    assert sorted(r.getMessage().split()[2] for r in caplog.records) == [
        "broken-0",
        "broken-1",
        "broken-2",
    ]
    engine.dispose()


def rows_ids(database):
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return [task_id for (task_id,) in connection.execute(f"SELECT task_id FROM {TABLE}")]
