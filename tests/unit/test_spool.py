"""notifier.spool: what the broker did not take is kept on disk and published later, in order."""

import subprocess
import sys
import time

import pytest

from notifier.errors import ConfigurationError
from notifier.events import AfterResourceChanged
from notifier.message import encode
from notifier.settings import parse_settings
from notifier.spool import Spool, SpoolFile, main
from notifier.subscriber import Subscriber


class Broker:
    """A publisher whose broker is down until told otherwise; it records what it took."""

    def __init__(self, up=True):
        self.up = up
        self.published = []

    def publish(self, message, queue):
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
        spool.keep(message(article_id), "articles")

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
        spool.keep(message(article_id), "articles")

    assert spool.flush() == 2
    assert taken == ["a1", "a2"]
    (own,) = spool.files()
    assert len(own) == 2


def test_the_background_thread_publishes_kept_messages_when_the_broker_is_back(tmp_path):
    broker = Broker(up=False)
    spool = Spool(tmp_path, broker.publish, retry=0.05)
    spool.keep(message("a1"), "articles")
    time.sleep(0.2)
    assert broker.published == []

    broker.up = True
    deadline = time.monotonic() + 5
    while spool.holds_messages() and time.monotonic() < deadline:
        time.sleep(0.02)

    assert broker.published == [("a1", "articles")]


LEAVE_A_SPOOL_FILE = """
import sys
from notifier.message import encode
from notifier.spool import Spool
def down(message, queue):
    raise ConnectionError("down")
spool = Spool(sys.argv[1], down, retry=60)
payload = {"resource_name": "article", "action": "create", "article_id": "left-behind"}
spool.keep(encode(payload, [{"new": {}}], [0], request_id="r"), "articles")
"""


def test_a_file_left_by_a_process_that_is_gone_is_published_by_another(tmp_path):
    subprocess.run([sys.executable, "-c", LEAVE_A_SPOOL_FILE, str(tmp_path)], check=True)
    broker = Broker()

    Spool(tmp_path, broker.publish, retry=60).flush()

    assert broker.published == [("left-behind", "articles")]
    assert all(len(SpoolFile(path)) == 0 for path in tmp_path.glob("spool-*.sqlite3"))


def test_a_file_held_by_a_running_process_is_left_to_it(tmp_path):
    holder = Spool(tmp_path, Broker(up=False).publish, retry=60)
    holder.keep(message("a1"), "articles")
    other = Broker()

    assert Spool(tmp_path, other.publish, retry=60).flush() == 0
    assert other.published == []


def test_spools_of_different_publishers_keep_their_own_files(tmp_path):
    first = Spool(tmp_path, Broker(up=False).publish, retry=60, name="first")
    second_broker = Broker()
    second = Spool(tmp_path, second_broker.publish, retry=60, name="second")
    first.keep(message("a1"), "articles")

    assert second.flush() == 0
    assert second_broker.published == []


def after_commit(article_id, request):
    payload = {"resource_name": "article", "action": "create", "article_id": article_id}
    return AfterResourceChanged(payload, [{"new": {"id": article_id}}], request)


class FakeRequest:
    def __init__(self):
        self.environ = {}


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


def test_two_spools_of_one_process_with_one_name_keep_apart(tmp_path):
    first_broker, second_broker = Broker(up=False), Broker(up=False)
    first = Spool(tmp_path, first_broker.publish, retry=60)
    second = Spool(tmp_path, second_broker.publish, retry=60)

    first.keep(message("a1"), "articles")
    second.keep(message("a2"), "articles")

    assert first.holds_messages()
    assert second.holds_messages()


def test_a_starting_process_publishes_what_a_process_that_is_gone_left(tmp_path):
    subprocess.run([sys.executable, "-c", LEAVE_A_SPOOL_FILE, str(tmp_path)], check=True)
    broker = Broker()

    Spool(tmp_path, broker.publish, retry=0.01).start()

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
