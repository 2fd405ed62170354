"""notifier.spool: what the broker did not take is kept on disk and published later, in order."""

import logging
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from notifier.errors import ConfigurationError, SpoolFull
from notifier.events import AfterResourceChanged
from notifier.settings import parse_settings
from notifier.spool import Spool, SpoolFile, main
from notifier.subscriber import Subscriber
from notifier.wire.message import encode
from tests.unit.fakes import FakeRequest


@pytest.fixture(autouse=True)
def no_spool_left_behind(tmp_path):
    """A test's spool files go with it: when its spool's thread wakes later, it finds nothing
    to publish, and logs nothing into another test."""
    yield
    for path in tmp_path.rglob("spool-*"):
        if path.is_file():
            path.unlink()


class Broker:
    """A publisher whose broker is down until told otherwise; it records what it took, and
    counts the attempts."""

    def __init__(self, up=True):
        self.up = up
        self.published = []
        self.attempts = 0

    def publish(self, message, queue):
        self.attempts += 1
        if not self.up:
            raise ConnectionError("Connection refused")
        self.published.append((message.payload["article_id"], queue))


def message(article_id):
    payload = {"resource_name": "article", "action": "create", "article_id": article_id}
    return encode(payload, [{"new": {"id": article_id}}], [0], request_id="r")


def test_kept_messages_are_published_oldest_first_once_the_broker_answers(tmp_path):
    broker = Broker(up=False)
    spool = Spool(tmp_path, broker.publish, retry=60)
    for article_id in ("a1", "a2", "a3"):
        spool.write(message(article_id), "articles")

    assert spool.flush() == 0
    assert spool.holds_messages()
    broker.up = True
    assert spool.flush() == 3

    assert broker.published == [("a1", "articles"), ("a2", "articles"), ("a3", "articles")]
    assert not spool.holds_messages()


def test_a_flush_stops_at_the_first_message_the_broker_refuses_and_keeps_the_rest(tmp_path):
    taken = []

    def publish(message, queue):
        if len(taken) == 2:
            raise ConnectionError("Connection reset by peer")
        taken.append(message.payload["article_id"])

    spool = Spool(tmp_path, publish, retry=60)
    for article_id in ("a1", "a2", "a3", "a4"):
        spool.write(message(article_id), "articles")

    assert spool.flush() == 2
    assert taken == ["a1", "a2"]
    (own,) = spool.files()
    assert len(own) == 2


def test_the_background_thread_publishes_kept_messages_when_the_broker_is_back(tmp_path):
    broker = Broker(up=False)
    spool = Spool(tmp_path, broker.publish, retry=0.05)
    spool.write(message("a1"), "articles")
    time.sleep(0.2)
    assert broker.published == []

    broker.up = True
    deadline = time.monotonic() + 5
    while spool.holds_messages() and time.monotonic() < deadline:
        time.sleep(0.02)

    assert broker.published == [("a1", "articles")]


LEAVE_A_SPOOL_FILE = """
import sys
from notifier.wire.message import encode
from notifier.spool import Spool
def down(message, queue):
    raise ConnectionError("down")
spool = Spool(sys.argv[1], down, retry=60)
payload = {"resource_name": "article", "action": "create", "article_id": "left-behind"}
spool.write(encode(payload, [{"new": {}}], [0], request_id="r"), "articles")
"""


def test_a_file_left_by_a_process_that_is_gone_is_published_by_another(tmp_path):
    subprocess.run([sys.executable, "-c", LEAVE_A_SPOOL_FILE, str(tmp_path)], check=True)
    broker = Broker()

    Spool(tmp_path, broker.publish, retry=60).flush()

    assert broker.published == [("left-behind", "articles")]
    assert all(len(SpoolFile(path)) == 0 for path in tmp_path.glob("spool-*.sqlite3"))


def test_a_file_held_by_a_running_process_is_left_to_it(tmp_path):
    holder = Spool(tmp_path, Broker(up=False).publish, retry=60)
    holder.write(message("a1"), "articles")
    other = Broker()

    assert Spool(tmp_path, other.publish, retry=60).flush() == 0
    assert other.published == []


def test_spools_of_different_publishers_keep_their_own_files(tmp_path):
    first = Spool(tmp_path, Broker(up=False).publish, retry=60, name="first")
    second_broker = Broker()
    second = Spool(tmp_path, second_broker.publish, retry=60, name="second")
    first.write(message("a1"), "articles")

    assert second.flush() == 0
    assert second_broker.published == []


def after_commit(article_id, request):
    payload = {"resource_name": "article", "action": "create", "article_id": article_id}
    return AfterResourceChanged(payload, [{"new": {"id": article_id}}], request)


def test_an_event_the_broker_does_not_take_is_kept_and_later_ones_queue_behind_it(tmp_path):
    broker = Broker(up=False)
    spool = Spool(tmp_path, broker.publish, retry=60)
    subscriber = Subscriber(parse_settings({}, environ={}), broker, spool)

    subscriber(after_commit("a1", FakeRequest()))
    broker.up = True
    subscriber(after_commit("a2", FakeRequest()))  # the broker answers, but a1 is first

    assert broker.published == []
    assert spool.flush() == 2
    assert broker.published == [("a1", "notifier"), ("a2", "notifier")]


def test_the_spool_directory_must_be_one_this_process_can_write_to(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")

    with pytest.raises(ConfigurationError, match=r"^notifier.spool_dir = '.*a-file/spool'"):
        parse_settings({"notifier.spool_dir": str(a_file / "spool")}, environ={})


def test_the_command_line_lists_the_files_and_flushes_the_free_ones(tmp_path, capsys):
    subprocess.run([sys.executable, "-c", LEAVE_A_SPOOL_FILE, str(tmp_path)], check=True)

    assert main(["list", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "1 messages  free" in listed
    assert listed.endswith("1 spool files\n")

    assert main(["flush", str(tmp_path), "--broker-url", "memory://"]) == 0
    assert capsys.readouterr().out == "published 1 messages; 0 left in free spool files\n"


def test_the_command_line_says_when_the_broker_still_refuses(tmp_path, capsys):
    subprocess.run([sys.executable, "-c", LEAVE_A_SPOOL_FILE, str(tmp_path)], check=True)

    assert main(["flush", str(tmp_path), "--broker-url", "redis://127.0.0.1:1/0"]) == 1
    assert capsys.readouterr().out == "published 0 messages; 1 left in free spool files\n"


def test_the_command_line_flushes_to_the_broker_of_the_environment_and_says_which(
    monkeypatch, tmp_path, capsys
):
    subprocess.run([sys.executable, "-c", LEAVE_A_SPOOL_FILE, str(tmp_path)], check=True)
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")

    assert main(["flush", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == "published 1 messages; 0 left in free spool files\n"
    assert err == "notifier-spool: publishing to memory:///\n"


def test_the_command_line_names_the_files_a_running_process_holds_and_fails(tmp_path, capsys):
    holding = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LEAVE_A_SPOOL_FILE + "print('held', flush=True)\ninput()\n",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holding.stdout.readline() == "held\n"
        [held] = tmp_path.glob("spool-*.sqlite3")

        assert main(["flush", str(tmp_path), "--broker-url", "memory://"]) == 1
    finally:
        holding.communicate("\n", timeout=30)
    assert capsys.readouterr().out == (
        f"skipped {held.name}: held by a running process (1 messages)\n"
        "published 0 messages; 0 left in free spool files\n"
    )


def test_two_spools_of_one_process_with_one_name_keep_apart(tmp_path):
    first_broker, second_broker = Broker(up=False), Broker(up=False)
    first = Spool(tmp_path, first_broker.publish, retry=60)
    second = Spool(tmp_path, second_broker.publish, retry=60)

    first.write(message("a1"), "articles")
    second.write(message("a2"), "articles")

    assert first.holds_messages()
    assert second.holds_messages()


def test_a_starting_process_publishes_what_a_process_that_is_gone_left(tmp_path):
    subprocess.run([sys.executable, "-c", LEAVE_A_SPOOL_FILE, str(tmp_path)], check=True)
    broker = Broker()

    spool = Spool(tmp_path, broker.publish, retry=0.01)
    spool.start()

    deadline = time.monotonic() + 5
    while not broker.published and time.monotonic() < deadline:
        time.sleep(0.02)
    assert broker.published == [("left-behind", "articles")]


class UnreadableSpool(Spool):
    def holds_messages(self):
        raise OSError("disk I/O error")


def test_a_spool_that_cannot_be_read_never_fails_the_request(tmp_path, caplog):
    broker = Broker()
    spool = UnreadableSpool(tmp_path, broker.publish, retry=60)
    subscriber = Subscriber(parse_settings({}, environ={}), broker, spool)

    subscriber(after_commit("a1", FakeRequest()))

    assert "could not read the spool" in caplog.text
    assert spool.flush() == 1  # kept behind, to be safe, and published from the spool
    assert broker.published == [("a1", "notifier")]


def wait_until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def critical(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]


def said_the_spool_is_empty(caplog, spool):
    """Whether ``spool``'s thread said last that it published everything: its round is over,
    and it waits for the next message to keep. Only its own lines count: the threads of other
    tests' spools may still be logging."""

    def said() -> bool:
        own = logged_by(spool, caplog)
        return bool(own) and own[-1].getMessage().endswith("spool empty")

    return wait_until(said)


def logged_by(spool, caplog):
    """The lines ``spool``'s thread logged."""
    thread = spool._thread
    return [r for r in caplog.records if thread is not None and r.thread == thread.ident]


def full_disk(monkeypatch):
    """From now on no spool file may grow by a page: what needs one fails in SQLite with
    "database or disk is full", as on a full disk."""
    connect = SpoolFile._connect

    @contextmanager
    def full(self):
        with connect(self) as connection:
            connection.execute("PRAGMA max_page_count = 1")  # SQLite keeps the file's size
            yield connection

    monkeypatch.setattr(SpoolFile, "_connect", full)


def files_that_cannot_be_changed(monkeypatch):
    """From now on spool files can be read, not changed: SQLite fails an insert or a delete
    with "attempt to write a readonly database"."""
    connect = SpoolFile._connect

    @contextmanager
    def read_only(self):
        with connect(self) as connection:
            connection.execute("PRAGMA query_only = 1")
            yield connection

    monkeypatch.setattr(SpoolFile, "_connect", read_only)


class UnwritableDirectory:
    """A spool directory this process cannot write to until make_writable(): read-only (mode
    0o500) or, for root, whom no mode stops, a path under a plain file."""

    def __init__(self, tmp_path):
        self.blocker = None
        self.writable = False
        if os.geteuid() == 0:
            self.blocker = tmp_path / "a-file"
            self.blocker.write_text("")
            self.path = self.blocker / "spool"
        else:
            self.path = tmp_path / "spool"
            self.path.mkdir()
            self.path.chmod(0o500)

    def make_writable(self):
        if self.writable:
            return
        if self.blocker is None:
            self.path.chmod(0o700)
        else:
            self.blocker.unlink()
        self.writable = True


@pytest.fixture
def unwritable(tmp_path):
    directory = UnwritableDirectory(tmp_path)
    yield directory
    directory.make_writable()


def test_a_full_disk_loses_nothing_once_the_broker_answers_and_the_spool_empties(
    tmp_path, monkeypatch, caplog
):
    broker = Broker(up=False)
    spool = Spool(tmp_path, broker.publish, retry=0.01)
    subscriber = Subscriber(parse_settings({}, environ={}), broker, spool)
    sent = ["a0"]
    subscriber(after_commit("a0", FakeRequest()))
    full_disk(monkeypatch)
    while not critical(caplog) and len(sent) < 100:  # until the file takes no more
        sent.append(f"a{len(sent)}")
        subscriber(after_commit(sent[-1], FakeRequest()))

    broker.up = True
    for article_id in ("b1", "b2", "b3"):  # behind the others, the disk still full
        sent.append(article_id)
        subscriber(after_commit(article_id, FakeRequest()))
    assert wait_until(lambda: not spool.holds_messages())
    assert said_the_spool_is_empty(caplog, spool)
    subscriber(after_commit("c1", FakeRequest()))  # straight to the broker

    assert [article_id for article_id, _ in broker.published] == [*sent, "c1"]
    assert not critical(caplog)[0].startswith("lost")


def test_a_read_only_spool_directory_keeps_messages_in_memory_until_the_broker_answers(
    unwritable, caplog
):
    broker = Broker(up=False)
    spool = Spool(unwritable.path, broker.publish, retry=0.01)
    kept = [message(article_id) for article_id in ("a1", "a2", "a3")]
    for each in kept:
        spool.write(each, "articles")

    lines = critical(caplog)  # one for each, naming it
    assert all(
        each.task_id in line and "in memory" in line for each, line in zip(kept, lines, strict=True)
    )
    assert len(lines) == 3
    assert spool.holds_messages()
    broker.up = True
    assert wait_until(lambda: not spool.holds_messages())
    assert said_the_spool_is_empty(caplog, spool)
    assert broker.published == [("a1", "articles"), ("a2", "articles"), ("a3", "articles")]


def test_a_message_the_memory_queue_has_no_room_for_is_logged_as_lost_with_its_id(
    unwritable, caplog
):
    broker = Broker(up=False)
    spool = Spool(unwritable.path, broker.publish, retry=60, memory_limit=2)
    kept = [message(article_id) for article_id in ("a1", "a2", "a3")]
    spool.write(kept[0], "articles")
    spool.write(kept[1], "articles")
    with pytest.raises(SpoolFull, match=kept[2].task_id):
        spool.write(kept[2], "articles")

    (lost,) = [line for line in critical(caplog) if line.startswith("lost")]
    assert kept[2].task_id in lost
    broker.up = True
    assert spool.flush() == 2
    assert broker.published == [("a1", "articles"), ("a2", "articles")]


def test_messages_held_in_memory_go_to_disk_once_it_takes_them_and_keep_their_order(unwritable):
    broker = Broker(up=False)
    spool = Spool(unwritable.path, broker.publish, retry=60)
    spool.write(message("a1"), "articles")  # in memory
    unwritable.make_writable()
    spool.write(message("a2"), "articles")  # behind a1, though the disk would take it

    assert spool.flush() == 0  # the broker refuses: what memory holds goes to disk
    (own,) = spool.files()
    assert len(own) == 2
    spool.write(message("a3"), "articles")
    broker.up = True
    assert spool.flush() == 3
    assert broker.published == [("a1", "articles"), ("a2", "articles"), ("a3", "articles")]
    assert not spool.holds_messages()


def test_messages_published_from_a_file_that_cannot_be_changed_are_published_once(
    tmp_path, monkeypatch, caplog
):
    broker = Broker(up=False)
    spool = Spool(tmp_path, broker.publish, retry=0.01)
    spool.write(message("a1"), "articles")
    spool.write(message("a2"), "articles")
    files_that_cannot_be_changed(monkeypatch)  # they cannot be deleted once published

    broker.up = True
    assert wait_until(lambda: not spool.holds_messages())
    spool.write(message("a3"), "articles")  # nor written: held in memory
    assert wait_until(lambda: not spool.holds_messages())
    assert said_the_spool_is_empty(caplog, spool)
    time.sleep(0.1)  # rounds enough to publish a1 and a2 again, if it did
    assert broker.published == [("a1", "articles"), ("a2", "articles"), ("a3", "articles")]


def test_a_spool_file_that_cannot_be_read_does_not_stop_the_background_thread(tmp_path, caplog):
    caplog.set_level(logging.INFO, "notifier")
    corrupt = tmp_path / "spool-notifier-gone-1-0.sqlite3"  # a dead process's, say
    corrupt.write_bytes(b"not a database " * 100)
    repaired = SpoolFile(tmp_path / "repaired")
    repaired.append(message("left-behind"), "articles")
    broker = Broker(up=False)
    spool = Spool(tmp_path, broker.publish, retry=0.01)
    spool.write(message("a1"), "articles")
    time.sleep(0.1)

    broker.up = True
    assert wait_until(lambda: not spool.holds_messages())
    spool.write(message("a2"), "articles")
    assert wait_until(lambda: not spool.holds_messages())

    assert broker.published == [("a1", "articles"), ("a2", "articles")]

    def about_it():
        return [r for r in caplog.records if corrupt.name in r.getMessage()]

    assert wait_until(lambda: len(about_it()) >= 5)  # a line a round: it keeps trying
    assert [r.levelno for r in about_it() if r.exc_info] == [logging.ERROR]  # one traceback
    repaired.path.rename(corrupt)  # and once it can be read, it is published
    assert said_the_spool_is_empty(caplog, spool)
    assert broker.published[-1] == ("left-behind", "articles")
    assert about_it()[-1].getMessage().endswith("works again")


def test_an_unexpected_error_of_the_publisher_does_not_stop_the_background_thread(tmp_path, caplog):
    broker = Broker()
    failures = 3

    def publish(message, queue):
        nonlocal failures
        if failures:
            failures -= 1
            raise TypeError("unexpected")
        broker.publish(message, queue)

    spool = Spool(tmp_path, publish, retry=0.01)
    spool.write(message("a1"), "articles")
    spool.write(message("a2"), "articles")

    assert wait_until(lambda: not spool.holds_messages())
    assert said_the_spool_is_empty(caplog, spool)
    assert broker.published == [("a1", "articles"), ("a2", "articles")]
    (traceback,) = [r for r in caplog.records if "TypeError: unexpected" in r.getMessage()]
    assert traceback.exc_info[0] is TypeError  # once, though it failed three times
    assert logged_by(spool, caplog)[-1].getMessage() == "published 2 spooled messages; spool empty"


def test_messages_in_a_spool_file_that_cannot_be_read_do_not_hold_later_ones_back(tmp_path):
    broker = Broker(up=False)
    spool = Spool(tmp_path, broker.publish, retry=60)
    subscriber = Subscriber(parse_settings({}, environ={}), broker, spool)
    subscriber(after_commit("a1", FakeRequest()))
    (own,) = spool.files()
    aside = own.path.rename(tmp_path / "aside")
    own.path.mkdir()  # where the file was, a directory: SQLite cannot open it
    assert spool.flush() == 0

    broker.up = True
    subscriber(after_commit("a2", FakeRequest()))
    assert broker.published == [("a2", "notifier")]
    own.path.rmdir()
    aside.rename(own.path)
    assert spool.flush() == 1
    assert broker.published == [("a2", "notifier"), ("a1", "notifier")]


def test_a_starting_process_publishes_what_a_process_that_is_gone_left_however_long_it_waits(
    tmp_path, caplog
):
    subprocess.run([sys.executable, "-c", LEAVE_A_SPOOL_FILE, str(tmp_path)], check=True)
    broker = Broker(up=False)

    spool = Spool(tmp_path, broker.publish, retry=0.01)
    spool.start()

    assert wait_until(lambda: broker.attempts >= 5)  # five rounds, and more to come
    broker.up = True
    assert wait_until(lambda: broker.published)
    assert said_the_spool_is_empty(caplog, spool)
    assert broker.published == [("left-behind", "articles")]
    assert all(len(SpoolFile(path)) == 0 for path in tmp_path.glob("spool-*.sqlite3"))


def test_an_event_the_spool_has_no_room_for_is_never_logged_as_kept(unwritable, caplog):
    broker = Broker(up=False)
    spool = Spool(unwritable.path, broker.publish, retry=60, memory_limit=0)
    subscriber = Subscriber(parse_settings({}, environ={}), broker, spool)

    subscriber(after_commit("a1", FakeRequest()))

    assert [line for line in critical(caplog) if line.startswith("lost event")]
    assert "nor keep it in the spool: lost" in caplog.text
    assert "to publish later" not in caplog.text


def test_the_command_line_says_its_version(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["--version"])

    assert ended.value.code == 0
    assert capsys.readouterr().out.startswith("notifier-spool ")
