"""Batch listeners: @listener(..., batch=N) receives lists of events, collected by dispatch over
the messages it takes, one task per batch; a failed batch goes on event by event."""

import json

import pytest

from notifier.errors import ListenerError
from notifier.wire.message import DISPATCH_TASK, encode
from notifier.wire.message import split as split_event
from notifier.wire.protocol import task_message
from tasks.broker.tracing import trace
from tasks.dispatch.batches import batch_task_id
from tasks.dispatch.delivery import Delivery
from tasks.dispatch.inline import Inline
from tasks.dispatch.pace import Pace
from tasks.dispatch.run import DispatchRun
from tasks.listeners.batch import run_batch
from tests.unit import builders
from tests.unit.builders import QUEUE, fan_out_to


@pytest.fixture(autouse=True)
def worker(wired):
    """The registry is wired as a worker's: its batch tasks run through the bound on
    deliveries."""
    return wired


def message(number=0, resource_name="article"):
    return builders.message(resource_name, ids=(f"a{number}",))


def queue_dispatch(client, data):
    client.lpush(QUEUE, task_message(DISPATCH_TASK, data["event_id"], [data], QUEUE))


def sent_tasks(client, queue):
    return [json.loads(item) for item in reversed(client.lrange(queue, 0, -1))]


def ignore(events):
    return events


def arguments(task):
    return json.loads(task["body"])[0][0]


# Declaring them -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [0, -1, True, 2.5, "100", 1001])
def test_a_batch_that_is_not_a_whole_number_from_1_to_1000_is_refused_at_import(registry, batch):
    with pytest.raises(ListenerError, match="bad batch="):
        registry.listener("article", batch=batch)(lambda events: None)


@pytest.mark.parametrize("option", [{"ordered": True}, {"parents": ("blog",)}])
def test_a_batch_listener_cannot_keep_order(registry, option):
    with pytest.raises(ListenerError, match="cannot keep order"):
        registry.listener("article", batch=10, **option)(lambda events: None)


def test_a_batch_listener_is_a_plain_function_not_a_celery_task(registry):
    registry.app.finalize()
    task = registry.app.task(name="bulk", shared=False)(ignore)

    with pytest.raises(ListenerError, match="batch= takes a plain function"):
        registry.listener("article", batch=10)(task)


def test_a_batch_listener_is_registered_with_its_batch_and_returned_unchanged(registry):
    def index_articles(events):
        return events

    decorated = registry.listener("article", batch=50, name="bulk.index")(index_articles)

    assert decorated is index_articles
    assert registry["bulk.index"].batch == 50
    assert registry["bulk.index"].task.max_retries == 3  # a listener's retries


def test_the_task_of_a_batch_listener_gives_it_the_events_of_a_list_of_messages(registry):
    received = []
    registry.listener("article", batch=10, name="bulk.index")(received.append)

    registry["bulk.index"].task.run([message(1), message(2)])
    registry["bulk.index"].task.run(message(3))  # a batch of one: a single message

    assert [[event.impacted_records[0]["new"]["id"] for event in run] for run in received] == [
        ["a1", "a2"],
        ["a3"],
    ]


def test_a_batch_task_id_is_the_first_message_s_and_the_count():
    assert batch_task_id(["e1", "e2", "e3"], "bulk") == "e1+3:bulk"
    assert batch_task_id(["e1"], "bulk") == "e1:bulk"


# Dispatch collects them ---------------------------------------------------------------------


def test_dispatch_sends_one_task_with_the_messages_it_took_for_a_batch_listener(
    client, taker, registry, dead_letters
):
    registry.listener("article", batch=10, name="bulk.index")(ignore)
    messages = [message(number) for number in range(4)]
    for data in messages[1:]:
        queue_dispatch(client, data)
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    assert run.handle(Delivery(messages[0])) == ["bulk.index"]
    run.take_more()
    run.finish()

    [task] = sent_tasks(client, registry["bulk.index"].queue)
    assert task["headers"]["id"] == f"{messages[0]['event_id']}+4:bulk.index"
    assert arguments(task) == messages
    assert client.hlen("unacked") == 0


def test_a_full_batch_is_sent_at_once_and_the_rest_in_the_next(
    client, taker, registry, dead_letters
):
    registry.listener("article", batch=2, name="bulk.index")(ignore)
    messages = [message(number) for number in range(5)]
    for data in messages:
        queue_dispatch(client, data)
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    run.take_more()
    run.finish()

    sent = sent_tasks(client, registry["bulk.index"].queue)
    assert [len(arguments(task)) if isinstance(arguments(task), list) else 1 for task in sent] == [
        2,
        2,
        1,
    ]
    assert sent[2]["headers"]["id"] == f"{messages[4]['event_id']}:bulk.index"


def test_a_batch_listener_never_runs_in_dispatch_and_keeps_the_lone_listener_alone(
    client, taker, registry, dead_letters
):
    ran = []

    def bulk_index(events):
        ran.append("bulk")

    def index(event):
        ran.append("search")

    registry.listener("article", batch=10, name="bulk.index")(bulk_index)
    registry.listener("article", name="search.index")(index)
    registry.app.amqp.queues.select_add(registry["search.index"].queue)
    queue_dispatch(client, message())
    run = DispatchRun(registry, dead_letters, QUEUE, taker, inline=Inline(Pace()))

    run.take_more()
    run.finish()

    assert ran == ["search"]  # the one listener that is not a batch listener ran here
    assert len(sent_tasks(client, registry["bulk.index"].queue)) == 1


def test_fan_out_alone_sends_a_batch_listener_its_message_as_a_batch_of_one(
    registry, dead_letters, monkeypatch
):
    registry.listener("article", batch=10, name="bulk.index")(ignore)
    sent = []
    monkeypatch.setattr(
        registry["bulk.index"].task, "apply_async", lambda **options: sent.append(options)
    )
    data = message()

    assert fan_out_to(registry, data) == ["bulk.index"]
    assert sent[0]["args"] == (data,)
    assert sent[0]["task_id"] == f"{data['event_id']}:bulk.index"


# A failed batch goes on event by event ------------------------------------------------------


def run_in_worker(task, messages, retries=0, redelivered=False):
    """Run a batch task as a worker would (through Celery's tracer); return its state."""
    request = {
        "id": "batch-1",
        "retries": retries,
        "delivery_info": {"routing_key": "q", "redelivered": redelivered},
    }
    return trace(task, "batch-1", (messages,), request).state


@pytest.fixture
def split(monkeypatch, registry):
    sent = []

    def record(task):
        monkeypatch.setattr(task, "apply_async", lambda **options: sent.append(options))

    return sent, record


def test_a_batch_that_raises_goes_on_as_one_task_per_event_for_its_first_retry(registry, split):
    def bulk_index(events):
        raise RuntimeError("the bulk request failed")

    registry.listener("article", batch=10, name="bulk.index", retry_jitter=False)(bulk_index)
    task = registry["bulk.index"].task
    sent, record = split
    record(task)
    messages = [message(1), message(2)]

    assert run_in_worker(task, messages) == "SUCCESS"

    assert [options["args"] for options in sent] == [(messages[0],), (messages[1],)]
    assert [options["task_id"] for options in sent] == [
        f"{data['event_id']}:bulk.index" for data in messages
    ]
    assert {options["retries"] for options in sent} == {1}
    assert {options["countdown"] for options in sent} == {1.0}
    assert {options["queue"] for options in sent} == {registry["bulk.index"].queue}


def test_a_batch_that_comes_again_goes_on_event_by_event_without_running(registry, split):
    ran = []
    registry.listener("article", batch=10, name="bulk.index")(ran.append)
    task = registry["bulk.index"].task
    sent, record = split
    record(task)

    run_in_worker(task, [message(1), message(2)], redelivered=True)

    assert ran == []
    assert len(sent) == 2


def test_a_batch_of_one_retries_as_any_listener_does(registry):
    def bulk_index(events):
        raise RuntimeError("the bulk request failed")

    registry.listener("article", batch=10, name="bulk.index")(bulk_index)

    with pytest.raises(RuntimeError):
        run_batch(registry, "bulk.index", message(), bulk_index)


def test_a_batch_is_sent_once_it_holds_a_mebibyte_of_messages_whatever_its_count(
    client, taker, registry, dead_letters
):
    registry.listener("article", batch=100, name="bulk.index")(ignore)
    payload = {"resource_name": "article", "action": "delete", "uri": "/articles"}
    records = [{"old": {"id": f"a{number}", "title": "x" * 1000}} for number in range(1200)]
    parts = split_event(encode(payload, records, list(range(len(records))), "req-1"), 200_000)
    for part in parts:
        queue_dispatch(client, json.loads(json.dumps(part.as_dict())))
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    run.take_more()
    run.finish()

    sent = sent_tasks(client, registry["bulk.index"].queue)
    assert len(parts) == 7
    assert sum(len(arguments(task)) for task in sent) == 7
    assert len(sent) > 1
    assert all(len(json.loads(task["body"])[0][0]) <= 5 for task in sent)
    assert all(len(task["body"]) <= (1 << 20) + 20_000 for task in sent)
