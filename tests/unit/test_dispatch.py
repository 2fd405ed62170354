"""tasks.dispatch: every matching listener gets each message once, as its own task.

The listener tasks' sends are recorded instead of reaching a broker; dead letters live in
fakeredis.
"""

import logging

import pytest
from celery import Celery, signals
from kombu.exceptions import OperationalError

from notifier.errors import ListenersNotSent
from notifier.wire.message import decode
from tasks.dispatch.delivery import Delivery
from tasks.dispatch.run import DispatchRun
from tasks.dispatch.task import dispatch
from tests.unit.builders import fan_out_to, message


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
def sent(monkeypatch, registry):
    """Register the test's listeners first, then ask for this to watch their sends."""
    recorder = SentTasks()

    def watch():
        recorder.watch(monkeypatch, registry)
        return recorder

    return watch


def records(count):
    return [f"article-{number}" for number in range(count)]


def handle(registry, dead_letters, data):
    """What a dispatch run does with ``data``, of no queue."""
    return DispatchRun(registry, dead_letters, None).handle(Delivery(data))


def test_each_matching_listener_gets_the_message_once(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("*", name="audit.log")(ignore)
    registry.listener("article", actions=("create",), name="mail.new_article")(ignore)
    recorder = sent()
    data = message("article", "create")

    names = fan_out_to(registry, data)

    assert names == ["search.index", "audit.log", "mail.new_article"]
    assert sorted(recorder.tasks) == sorted(names)
    for sending in recorder.sent:
        assert sending["args"] == [data]
    assert len(dead_letters) == 0


def test_listeners_of_other_resources_get_nothing(registry, dead_letters, sent):
    registry.listener("comment", name="comments.moderate")(ignore)
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()

    fan_out_to(registry, message("article", "update"))

    assert recorder.tasks == ["search.index"]


def test_listeners_of_other_actions_get_nothing(registry, dead_letters, sent):
    registry.listener("article", actions=("delete",), name="archive.deleted")(ignore)
    registry.listener("article", actions=("create", "update"), name="search.index")(ignore)
    recorder = sent()

    fan_out_to(registry, message("article", "delete"))
    fan_out_to(registry, message("article", "update"))

    assert recorder.tasks == ["archive.deleted", "search.index"]


def test_read_events_reach_only_listeners_that_asked_for_read(registry, dead_letters, sent):
    registry.listener("*", name="audit.changes")(ignore)
    registry.listener("*", actions=("read",), name="audit.reads")(ignore)
    recorder = sent()

    fan_out_to(registry, message("article", "read"))

    assert recorder.tasks == ["audit.reads"]


def test_a_message_nobody_listens_to_is_sent_nowhere(registry, dead_letters, sent):
    registry.listener("comment", name="comments.moderate")(ignore)
    recorder = sent()

    assert fan_out_to(registry, message("article", "create")) == []
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
        fan_out_to(registry, message())

    assert recorder.tasks == ["mail.new_article"]
    assert raised.value.listeners == ["search.index"]


def test_a_second_attempt_sends_only_to_the_listeners_named(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    recorder = sent()

    assert fan_out_to(registry, message(), only=["search.index"]) == ["search.index"]
    assert recorder.tasks == ["search.index"]


def test_a_listener_task_id_is_the_event_id_and_the_listener_name(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()
    data = message()

    fan_out_to(registry, data)

    (sending,) = recorder.sent
    assert sending["task_id"] == f"{data['event_id']}:search.index"


def test_the_parts_of_one_event_get_listener_tasks_of_their_own(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()
    data = message(ids=records(2))

    for part in (0, 1):
        fan_out_to(registry, {**data, "part": part, "parts": 2})

    assert [sending["task_id"] for sending in recorder.sent] == [
        f"{data['event_id']}.0:search.index",
        f"{data['event_id']}.1:search.index",
    ]


def test_listeners_get_the_message_in_the_current_layout(registry, dead_letters, sent):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()
    data = message(ids=records(2))
    data["impacted_objects"] = data.pop("impacted_records")

    fan_out_to(registry, data)

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

    assert handle(registry, dead_letters, data) == []

    assert recorder.sent == []
    (letter,) = dead_letters
    assert letter.reason == reason
    assert letter.message == data
    assert letter.listener is None


def test_a_malformed_message_is_logged_with_its_dead_letter(registry, dead_letters, caplog):
    with caplog.at_level(logging.ERROR, logger="notifier"):
        handle(registry, dead_letters, {"version": 1})

    (letter,) = dead_letters
    assert letter.id in caplog.text
    assert "missing keys" in caplog.text


def test_a_message_that_is_not_json_is_kept_as_its_repr(registry, dead_letters):
    handle(registry, dead_letters, b"\x80\x04pickle")

    (letter,) = dead_letters
    assert letter.reason == "a message is a JSON object, not bytes"
    assert letter.message == repr(b"\x80\x04pickle")


def test_dead_letters_are_kept_newest_last(dead_letters):
    first = dead_letters.add("first reason", {"a": 1})
    second = dead_letters.add("second reason", [2], listener="search.index", traceback="tb")

    assert len(dead_letters) == 2
    assert [letter.id for letter in dead_letters] == [first.id, second.id]
    assert list(dead_letters)[1] == second


def test_the_dispatch_task_fans_out_with_the_workers_registry(registry, worker_wired, sent):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()

    assert dispatch.name == "notifier.dispatch"
    assert dispatch.run(message()) == ["search.index"]
    assert recorder.tasks == ["search.index"]


def test_a_dispatch_whose_message_went_to_the_dead_letters_is_rejected_not_a_success(
    registry, worker_wired, sent
):
    registry.listener("article", name="search.index")(ignore)
    recorder = sent()

    result = dispatch.apply(args=({"version": 99},))

    assert result.state == "REJECTED"
    [letter] = worker_wired.dead_letters
    assert result.result.reason == f"a malformed message, kept as dead letter {letter.id}"
    assert not result.result.requeue  # the broker drops it: the dead letter keeps it
    assert recorder.sent == []


def test_a_dispatch_rejected_for_its_dead_letter_is_not_kept_again_when_celery_says_it_failed(
    registry, worker_wired
):
    result = dispatch.apply(args=({"version": 99},))
    # What the worker's main process sends for a task that rejected its message for good.
    signals.task_failure.send(
        sender=dispatch, task_id=result.id, exception=result.result, args=[{}], einfo=None
    )

    assert len(worker_wired.dead_letters) == 1


def test_a_listener_that_failed_for_good_ends_in_the_dead_letters(registry, dead_letters, wired):
    registry.listener("article", name="search.index")(ignore)
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


def test_the_log_record_of_a_listener_that_failed_for_good_carries_the_event_and_listener(
    registry, dead_letters, wired, caplog
):
    registry.listener("article", name="search.index")(ignore)
    data = message()
    task = registry["search.index"].task
    task.push_request(delivery_info={"routing_key": registry["search.index"].queue})
    try:
        with caplog.at_level(logging.ERROR, logger="notifier"):
            signals.task_failure.send(
                sender=task,
                task_id=f"{data['event_id']}:search.index",
                exception=TimeoutError("the index is locked"),
                args=[data],
                kwargs={},
                einfo=None,
            )
    finally:
        task.pop_request()

    [record] = [r for r in caplog.records if "failed for good" in r.getMessage()]
    assert (record.event_id, record.listener) == (data["event_id"], "search.index")
    assert record.queue == registry["search.index"].queue


def test_a_task_that_is_no_listener_is_not_dead_lettered_as_one(dead_letters, wired):
    other = Celery("other", broker="memory://").task(shared=False, name="other.task")(ignore)

    signals.task_failure.send(
        sender=other, task_id="x", exception=RuntimeError("boom"), args=[{}], einfo=None
    )

    assert len(dead_letters) == 0


def test_a_dispatch_that_failed_on_its_arguments_keeps_them_as_a_dead_letter(
    dead_letters, worker_wired
):

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


def test_a_listener_dispatch_could_not_reach_ends_in_the_dead_letters(dead_letters, worker_wired):
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
