"""tasks.dispatch.task: every matching listener gets each message once, as its own task.

The listener tasks' sends are recorded instead of reaching a broker; dead letters live in
fakeredis.
"""

import importlib
import json
import logging

import fakeredis
import pytest
from celery import Celery, signals
from kombu.exceptions import OperationalError

from notifier.errors import ListenersNotSent
from notifier.wire.message import decode, encode
from tasks.dead_letters import DeadLetters
from tasks.dispatch.task import dispatch, fan_out
from tasks.listeners.registry import Registry

# By module: the package's own ``dispatch`` attribute is the dispatch task.
dispatch_module = importlib.import_module("tasks.dispatch.task")


class SentTasks:
    """Stands in for each listener task's apply_async: keeps what would have been sent."""

    def __init__(self):
        self.sent = []

    def watch(self, monkeypatch, registry):
        for listener in registry:
            monkeypatch.setattr(listener.task, "apply_async", self._recorder(listener.task.name))

    def _recorder(self, task_name):
        def apply_async(args=None, kwargs=None, task_id=None, **options):
            self.sent.append({"task": task_name, "args": list(args), "task_id": task_id, **options})

        return apply_async

    @property
    def tasks(self):
        return [sent["task"] for sent in self.sent]


def ignore(event):
    return event


@pytest.fixture
def registry():
    return Registry(Celery("dispatch-tests", broker="memory://", set_as_current=False))


@pytest.fixture
def dead_letters():
    return DeadLetters(fakeredis.FakeRedis())


@pytest.fixture
def sent(monkeypatch, registry):
    """Register the test's listeners first, then ask for this to watch their sends."""
    recorder = SentTasks()

    def watch():
        recorder.watch(monkeypatch, registry)
        return recorder

    return watch


def message(resource_name="article", action="create", records=1):
    payload = {"resource_name": resource_name, "action": action, "uri": f"/{resource_name}s"}
    impacted = [{"new": {"id": f"{resource_name}-{n}"}} for n in range(records)]
    return json.loads(
        json.dumps(encode(payload, impacted, list(range(records)), "req-1").as_dict())
    )


def test_each_matching_listener_gets_the_message_once(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("*", name="audit.log")(ignore)
    registry.listener("article", actions=("create",), name="mail.new_article")(ignore)
    recorder = sent()
    data = message("article", "create")

    names = fan_out(data, registry, dead_letters)

    assert names == ["search.index", "audit.log", "mail.new_article"]
    assert sorted(recorder.tasks) == sorted(names)
    for sending in recorder.sent:
        assert sending["args"] == [data]
    assert len(dead_letters) == 0


def test_listeners_of_other_resources_get_nothing(registry, dead_letters, sent):
    registry.listener("comment", name="comments.moderate")(ignore)
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()

    fan_out(message("article", "update"), registry, dead_letters)

    assert recorder.tasks == ["search.index"]


def test_listeners_of_other_actions_get_nothing(registry, dead_letters, sent):
    registry.listener("article", actions=("delete",), name="archive.deleted")(ignore)
    registry.listener("article", actions=("create", "update"), name="search.index")(ignore)
    recorder = sent()

    fan_out(message("article", "delete"), registry, dead_letters)
    fan_out(message("article", "update"), registry, dead_letters)

    assert recorder.tasks == ["archive.deleted", "search.index"]


def test_read_events_reach_only_listeners_that_asked_for_read(registry, dead_letters, sent):
    registry.listener("*", name="audit.changes")(ignore)
    registry.listener("*", actions=("read",), name="audit.reads")(ignore)
    recorder = sent()

    fan_out(message("article", "read"), registry, dead_letters)

    assert recorder.tasks == ["audit.reads"]


def test_a_message_nobody_listens_to_is_sent_nowhere(registry, dead_letters, sent):
    registry.listener("comment", name="comments.moderate")(ignore)
    recorder = sent()

    assert fan_out(message("article", "create"), registry, dead_letters) == []
    assert recorder.sent == []
    assert len(dead_letters) == 0


def test_a_listener_that_cannot_be_sent_to_does_not_keep_the_others_from_their_message(
    monkeypatch, registry, dead_letters, sent
):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    recorder = sent()

    def broker_timeout(*args, **kwargs):
        raise OperationalError("Timeout writing to socket")

    monkeypatch.setattr(registry["search.index"].task, "apply_async", broker_timeout)

    with pytest.raises(ListenersNotSent) as raised:
        fan_out(message(), registry, dead_letters)

    assert recorder.tasks == ["mail.new_article"]
    assert raised.value.listeners == ["search.index"]


def test_a_second_attempt_sends_only_to_the_listeners_named(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    recorder = sent()

    assert fan_out(message(), registry, dead_letters, only=["search.index"]) == ["search.index"]
    assert recorder.tasks == ["search.index"]


def test_a_listener_task_id_is_the_event_id_and_the_listener_name(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()
    data = message()

    fan_out(data, registry, dead_letters)

    (sending,) = recorder.sent
    assert sending["task_id"] == f"{data['event_id']}:search.index"


def test_the_parts_of_one_event_get_listener_tasks_of_their_own(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()
    data = message(records=2)

    for part in (0, 1):
        fan_out({**data, "part": part, "parts": 2}, registry, dead_letters)

    assert [sending["task_id"] for sending in recorder.sent] == [
        f"{data['event_id']}.0:search.index",
        f"{data['event_id']}.1:search.index",
    ]


def test_listeners_get_the_message_in_the_current_layout(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()
    data = message(records=2)
    data["impacted_objects"] = data.pop("impacted_records")

    fan_out(data, registry, dead_letters)

    ((sent_data,),) = [sending["args"] for sending in recorder.sent]
    assert sent_data["impacted_records"] == data["impacted_objects"]
    assert decode(sent_data).positions == [0, 1]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("not a message", "a message is a JSON object, not str"),
        ({"version": 2}, "unknown schema version 2: this worker reads version 1"),
        ({**message(), "positions": [0, 1]}, "positions is not a list as long as impacted_records"),
        ({**message(), "action": "delete"}, "action 'delete' differs from the payload's"),
    ],
    ids=["not-an-object", "unknown-version", "bad-positions", "action-mismatch"],
)
def test_a_malformed_message_ends_in_the_dead_letters_with_the_reason(
    registry, dead_letters, sent, data, reason
):
    registry.listener("*", actions=("create", "update", "delete", "read"), name="all.all")(ignore)
    recorder = sent()

    assert fan_out(data, registry, dead_letters) == []

    assert recorder.sent == []
    (letter,) = dead_letters
    assert letter.reason == reason
    assert letter.message == data
    assert letter.listener is None


def test_a_malformed_message_is_logged_with_its_dead_letter(registry, dead_letters, caplog):
    with caplog.at_level(logging.ERROR, logger="notifier"):
        fan_out({"version": 1}, registry, dead_letters)

    (letter,) = dead_letters
    assert letter.id in caplog.text
    assert "missing keys" in caplog.text


def test_a_message_that_is_not_json_is_kept_as_its_repr(registry, dead_letters):
    fan_out(b"\x80\x04pickle", registry, dead_letters)

    (letter,) = dead_letters
    assert letter.reason == "a message is a JSON object, not bytes"
    assert letter.message == repr(b"\x80\x04pickle")


def test_dead_letters_are_kept_newest_last(dead_letters):
    first = dead_letters.add("first reason", {"a": 1})
    second = dead_letters.add("second reason", [2], listener="search.index", traceback="tb")

    assert len(dead_letters) == 2
    assert [letter.id for letter in dead_letters] == [first.id, second.id]
    assert list(dead_letters)[1] == second


def test_the_dispatch_task_fans_out_with_the_workers_registry(
    monkeypatch, registry, dead_letters, sent
):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()
    monkeypatch.setattr(dispatch_module, "registry", registry)
    monkeypatch.setattr(dispatch_module, "dead_letters", lambda: dead_letters)

    assert dispatch.name == "notifier.dispatch"
    assert dispatch.run(message()) == ["search.index"]
    assert recorder.tasks == ["search.index"]


def test_a_listener_that_failed_for_good_ends_in_the_dead_letters(
    monkeypatch, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    monkeypatch.setattr(dispatch_module, "registry", registry)
    monkeypatch.setattr(dispatch_module, "dead_letters", lambda: dead_letters)
    data = message()

    signals.task_failure.send(
        sender=registry["search.index"].task,
        task_id=f"{data['event_id']}:search.index",
        exception=TimeoutError("the index is locked"),
        args=[data],
        kwargs={},
        traceback=None,
        einfo="Traceback (most recent call last): ...",
    )

    (letter,) = dead_letters
    assert letter.listener == "search.index"
    assert letter.reason == "TimeoutError: the index is locked"
    assert letter.message == data
    assert letter.traceback == "Traceback (most recent call last): ..."


def test_a_task_that_is_no_listener_is_not_dead_lettered_as_one(
    monkeypatch, registry, dead_letters
):
    monkeypatch.setattr(dispatch_module, "registry", registry)
    monkeypatch.setattr(dispatch_module, "dead_letters", lambda: dead_letters)
    other = Celery("other", broker="memory://").task(shared=False, name="other.task")(ignore)

    signals.task_failure.send(
        sender=other, task_id="x", exception=RuntimeError("boom"), args=[{}], einfo=None
    )

    assert len(dead_letters) == 0


def test_a_dispatch_that_failed_on_its_arguments_keeps_them_as_a_dead_letter(
    monkeypatch, registry, dead_letters
):
    monkeypatch.setattr(dispatch_module, "registry", registry)
    monkeypatch.setattr(dispatch_module, "dead_letters", lambda: dead_letters)

    signals.task_failure.send(
        sender=dispatch,
        task_id="x",
        exception=TypeError("dispatch() got an unexpected keyword argument 'colour'"),
        args=[],
        kwargs={"colour": "blue"},
        einfo=None,
    )

    (letter,) = dead_letters
    assert letter.listener is None
    assert letter.reason == "TypeError: dispatch() got an unexpected keyword argument 'colour'"
    assert letter.message == {"args": [], "kwargs": {"colour": "blue"}}


def test_a_listener_dispatch_could_not_reach_ends_in_the_dead_letters(
    monkeypatch, registry, dead_letters
):
    monkeypatch.setattr(dispatch_module, "registry", registry)
    monkeypatch.setattr(dispatch_module, "dead_letters", lambda: dead_letters)
    data = message()

    signals.task_failure.send(
        sender=dispatch,
        task_id=data["event_id"],
        exception=ListenersNotSent(["search.index", "mail.new_article"]),
        args=[data],
        kwargs={"only": ["search.index", "mail.new_article"]},
        einfo=None,
    )

    assert [letter.listener for letter in dead_letters] == ["search.index", "mail.new_article"]
    assert all(letter.message == data for letter in dead_letters)
