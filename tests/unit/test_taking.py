"""tasks.broker.taking: one dispatch task takes the dispatch messages queued behind its own, as
kombu's Redis transport would deliver them (fakeredis runs the Lua script)."""

import base64
import inspect
import json
import time
import uuid

import pytest
from celery import Celery, signals

from notifier.wire.message import DISPATCH_TASK
from notifier.wire.protocol import task_message
from tasks.broker.taking import Taken, Taker, taker_of
from tasks.dispatch.delivery import Delivery
from tasks.dispatch.retries import DISPATCH_RETRIES
from tasks.dispatch.run import DispatchRun
from tests.unit import builders
from tests.unit.builders import QUEUE


def message(resource_name="article", number=0):
    return builders.message(resource_name, ids=(f"a{number}",))


def queue_dispatch(client, data):
    """LPUSH a dispatch task message as the web side writes it; return its task id."""
    task_id = data.get("event_id") or uuid.uuid4().hex
    client.lpush(QUEUE, task_message(DISPATCH_TASK, task_id, [data], QUEUE))
    return task_id


def celery_envelope(task="notifier.dispatch", args=None, kwargs=None, **headers):
    """A task message as Celery's send_task leaves it in Redis: a base64 body."""
    body = json.dumps([[message()] if args is None else args, kwargs or {}, {"callbacks": None}])
    body = body.encode()
    task_id = uuid.uuid4().hex
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"task": task, "id": task_id, "eta": None, "retries": 0, **headers},
            "properties": {
                "body_encoding": "base64",
                "delivery_tag": uuid.uuid4().hex,
                "delivery_info": {"exchange": "notifier", "routing_key": QUEUE},
                "priority": 0,
            },
        }
    )


def test_taking_takes_the_oldest_messages_first(client, taker):
    first = queue_dispatch(client, message(number=1))
    second = queue_dispatch(client, message(number=2))
    third = queue_dispatch(client, message(number=3))

    taken = taker.take(QUEUE, 2, 1 << 20)

    assert [item.task_id for item in taken] == [first, second]
    assert [item.message["impacted_records"][0]["new"]["id"] for item in taken] == ["a1", "a2"]
    assert client.llen(QUEUE) == 1
    assert json.loads(client.rpop(QUEUE))["headers"]["id"] == third


def test_a_taken_message_is_unacknowledged_as_kombu_keeps_a_message_it_delivered(client, taker):
    queue_dispatch(client, message())
    before = time.time()

    [taken] = taker.take(QUEUE, 10, 1 << 20)

    # kombu's QoS.append: [the message, its exchange, its routing key] under its delivery tag,
    # and the tag in the index scored with the time: what its restore sweep reads.
    envelope, exchange, routing_key = json.loads(client.hget("unacked", taken.tag))
    assert envelope == json.loads(taken.raw)
    assert (exchange, routing_key) == ("", QUEUE)
    assert client.zscore("unacked_index", taken.tag) >= before


def test_a_message_for_another_task_is_pushed_back_where_it_was_and_stops_the_taking(client, taker):
    queue_dispatch(client, message(number=1))
    client.lpush(QUEUE, celery_envelope(task="some.other_task"))
    queue_dispatch(client, message(number=3))

    taken = taker.take(QUEUE, 10, 1 << 20)

    assert len(taken) == 1
    assert client.llen(QUEUE) == 2
    assert json.loads(client.lindex(QUEUE, -1))["headers"]["task"] == "some.other_task"
    assert client.hlen("unacked") == 1


@pytest.mark.parametrize(
    "item",
    [
        celery_envelope(eta="2030-01-01T00:00:00+00:00"),
        celery_envelope(expires="2030-01-01T00:00:00+00:00"),
        "not json",
        json.dumps({"body": "x", "headers": {"task": DISPATCH_TASK}}),
    ],
    ids=["eta", "expires", "not-json", "no-properties"],
)
def test_a_message_dispatch_cannot_run_now_stays_next_in_its_queue(client, taker, item):
    client.lpush(QUEUE, item)

    assert taker.take(QUEUE, 10, 1 << 20) == []
    assert client.lrange(QUEUE, 0, -1) == [item.encode()]
    assert client.hlen("unacked") == 0


def test_celery_send_task_messages_are_read_from_their_base64_body(client, taker):
    client.lpush(QUEUE, celery_envelope(kwargs={"only": ["search.index"]}, retries=2))

    [taken] = taker.take(QUEUE, 10, 1 << 20)

    assert taken.problem is None
    assert taken.message["resource_name"] == "article"
    assert (taken.only, taken.retries) == (["search.index"], 2)
    assert json.loads(client.hget("unacked", taken.tag))[1:] == ["notifier", QUEUE]


def test_a_body_dispatch_cannot_run_with_is_taken_with_the_reason(client, taker):
    client.lpush(QUEUE, celery_envelope(args=[message(), None, "extra"]))

    [taken] = taker.take(QUEUE, 10, 1 << 20)

    assert "dispatch takes a message and only=" in taken.problem


def test_taking_stops_before_the_bytes_bound_but_takes_one_message_whatever_its_size(client, taker):
    for number in range(3):
        queue_dispatch(client, message(number=number))

    assert len(taker.take(QUEUE, 10, 10)) == 1
    assert client.llen(QUEUE) == 2


def test_an_acknowledged_message_is_forgotten(client, taker):
    queue_dispatch(client, message())
    [taken] = taker.take(QUEUE, 10, 1 << 20)

    taker.ack([taken.tag])

    assert client.hlen("unacked") == 0
    assert client.zcard("unacked_index") == 0


def test_messages_given_back_are_next_in_their_queue_in_their_order(client, taker):
    ids = [queue_dispatch(client, message(number=number)) for number in range(3)]
    taken = taker.take(QUEUE, 2, 1 << 20)

    taker.give_back(QUEUE, taken)

    assert [item.task_id for item in taker.take(QUEUE, 3, 1 << 20)] == ids
    assert client.hlen("unacked") == 3


def test_a_refresh_keeps_only_what_is_still_unacknowledged_visible(client):
    taker = Taker(client, visibility_timeout=30)
    queue_dispatch(client, message(number=1))
    queue_dispatch(client, message(number=2))
    kept, acked = taker.take(QUEUE, 2, 1 << 20)
    client.zadd("unacked_index", {kept.tag: 1.0})
    client.zrem("unacked_index", acked.tag)

    taker._refresh()  # what its thread does every third of the visibility timeout

    assert client.zscore("unacked_index", kept.tag) > 1.0
    assert client.zscore("unacked_index", acked.tag) is None


def test_other_key_names_of_the_transport_options_are_honoured(client):
    taker = Taker(
        client,
        visibility_timeout=30,
        key_prefix="app:",
        unacked_key="held",
        unacked_index_key="held_index",
    )
    client.lpush(f"app:{QUEUE}", task_message(DISPATCH_TASK, "t1", [message()], QUEUE))

    [taken] = taker.take(QUEUE, 10, 1 << 20)

    assert client.hexists("app:held", taken.tag)
    assert client.zscore("app:held_index", taken.tag) is not None


# What dispatch does with what it takes ------------------------------------------------------


class Resent:
    """Stands in for the dispatch task a run sends again: keeps what it would have sent."""

    def __init__(self):
        self.sent = []

    def apply_async(self, **options):
        self.sent.append(options)


def listener_tasks(client, registry, name):
    queue = registry[name].queue
    return [json.loads(item) for item in reversed(client.lrange(queue, 0, -1))]


def ignore(event):
    return event


def test_dispatch_sends_the_listeners_of_every_message_it_takes_and_acknowledges_them(
    client, taker, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    ids = [queue_dispatch(client, message(number=number)) for number in range(3)]
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    run.take_more()
    run.finish()

    for name in ("search.index", "mail.new_article"):
        sent = listener_tasks(client, registry, name)
        assert [task["headers"]["id"] for task in sent] == [f"{id}:{name}" for id in ids]
    assert client.hlen("unacked") == 0
    assert client.llen(QUEUE) == 0


def test_listener_tasks_the_taker_writes_name_their_dispatch_and_send_publish_signals(
    client, taker, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    task_id = queue_dispatch(client, message())
    published = []

    def after(sender=None, headers=None, routing_key=None, **kwargs):
        published.append((sender, headers["id"], routing_key))

    signals.after_task_publish.connect(after)
    try:
        run = DispatchRun(registry, dead_letters, QUEUE, taker)
        run.take_more()
        run.finish()
    finally:
        signals.after_task_publish.disconnect(after)

    [sent] = listener_tasks(client, registry, "search.index")
    assert sent["headers"]["id"] == f"{task_id}:search.index"
    assert (sent["headers"]["parent_id"], sent["headers"]["root_id"]) == (task_id, task_id)
    queue = registry["search.index"].queue
    assert published == [(registry["search.index"].task.name, f"{task_id}:search.index", queue)]


def test_the_listener_tasks_of_a_round_taken_are_written_in_one_round_trip_before_its_ack(
    monkeypatch, client, taker, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    ids = [queue_dispatch(client, message(number=number)) for number in range(3)]
    writes = []
    real_write = taker.write

    def write(composed):
        writes.append((len(composed), client.hlen("unacked")))
        real_write(composed)

    monkeypatch.setattr(taker, "write", write)
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    run.take_more()
    run.finish()

    assert writes == [(6, 3)]  # every task of the three messages, while they were unacknowledged
    assert [task["headers"]["id"] for task in listener_tasks(client, registry, "search.index")] == [
        f"{id}:search.index" for id in ids
    ]
    assert client.hlen("unacked") == 0


def test_a_round_whose_listener_tasks_the_broker_refused_is_sent_again_message_by_message(
    monkeypatch, client, taker, registry, dead_letters, caplog
):
    registry.listener("article", name="search.index")(ignore)
    ids = [queue_dispatch(client, message(number=number)) for number in range(2)]

    def refuse(composed):
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(taker, "write", refuse)
    dispatch = Resent()
    run = DispatchRun(registry, dead_letters, QUEUE, taker, dispatch=dispatch)

    run.take_more()
    run.finish()

    assert [(again["task_id"], again["kwargs"]) for again in dispatch.sent] == [
        (id, {"only": ["search.index"]}) for id in ids
    ]
    assert "the listener tasks of 2 events taken were not sent" in caplog.text
    assert client.hlen("unacked") == 0


def test_a_run_that_found_its_queue_empty_takes_what_comes_while_it_lingers_then_ends(
    client, taker, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    first = queue_dispatch(client, message(number=1))
    now = [0.0]
    arrivals = {0.002: message(number=2)}  # one message 2 ms after the queue ran empty
    later = []

    def sleep(seconds):
        now[0] = round(now[0] + seconds, 6)
        if now[0] in arrivals:
            later.append(queue_dispatch(client, arrivals.pop(now[0])))

    run = DispatchRun(
        registry, dead_letters, QUEUE, taker, linger=0.01, clock=lambda: now[0], sleep=sleep
    )

    run.take_more()
    run.finish()

    sent = listener_tasks(client, registry, "search.index")
    assert [task["headers"]["id"] for task in sent] == [
        f"{id}:search.index" for id in (first, *later)
    ]
    # It looked again every 2 ms and ended 10 ms after the queue ran empty the second time.
    assert 0.01 <= now[0] <= 0.014
    assert client.hlen("unacked") == 0


def test_a_malformed_message_taken_ends_in_the_dead_letters_and_is_acknowledged(
    client, taker, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    queue_dispatch(client, {"version": 99})
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    run.take_more()
    run.finish()

    [letter] = dead_letters
    assert "unknown schema version 99" in letter.reason
    assert letter.queue == QUEUE
    assert client.hlen("unacked") == 0


def test_a_body_dispatch_cannot_run_with_ends_in_the_dead_letters(
    client, taker, registry, dead_letters
):
    client.lpush(QUEUE, celery_envelope(args=[message(), None, "extra"]))
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    run.take_more()
    run.finish()

    [letter] = dead_letters
    assert letter.reason.startswith("queue 'notifier': an invalid dispatch task message")
    assert client.hlen("unacked") == 0


def test_a_taken_message_some_listener_missed_is_sent_again_to_dispatch_for_it_alone(
    monkeypatch, client, taker, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    task_id = queue_dispatch(client, message())

    def write(composed):
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(taker, "write", write)
    monkeypatch.setattr(taker, "writes_for", lambda task: task.name == "mail.new_article")
    dispatch = Resent()
    monkeypatch.setattr(
        registry["search.index"].task, "apply_async", lambda **options: None, raising=False
    )
    run = DispatchRun(registry, dead_letters, QUEUE, taker, dispatch=dispatch)

    run.take_more()
    run.finish()

    [again] = dispatch.sent
    assert again["kwargs"] == {"only": ["mail.new_article"]}
    assert (again["task_id"], again["queue"], again["retries"]) == (task_id, QUEUE, 1)
    assert again["countdown"] == 1
    assert client.hlen("unacked") == 0


def test_a_taken_message_out_of_retries_leaves_its_missed_listeners_in_the_dead_letters(
    monkeypatch, client, taker, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    client.lpush(
        QUEUE, celery_envelope(kwargs={"only": ["search.index"]}, retries=DISPATCH_RETRIES)
    )

    def unreachable(composed):
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(taker, "write", unreachable)
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    run.take_more()
    run.finish()

    [letter] = dead_letters
    assert letter.listener == "search.index"
    assert letter.attempts == DISPATCH_RETRIES + 1
    assert client.hlen("unacked") == 0


def test_messages_taken_after_the_time_bound_go_back_to_their_queue(
    monkeypatch, client, taker, registry, dead_letters
):
    registry.listener("article", name="search.index")(ignore)
    ids = [queue_dispatch(client, message(number=number)) for number in range(3)]
    # Its time is up once it took them: the first reading of the clock after its start is its
    # last in time.
    readings = iter([0.0, 0.0])
    run = DispatchRun(registry, dead_letters, QUEUE, taker, clock=lambda: next(readings, 1e9))

    run.take_more()

    queued = [json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange(QUEUE, 0, -1))]
    assert queued == ids
    assert client.hlen("unacked") == 0


@pytest.mark.parametrize(
    "lua_only", ['"retries": 0x0', '"retries": nan', '"retries": inf'], ids=["hex", "nan", "inf"]
)
def test_an_item_only_redis_lua_reads_is_taken_with_the_reason_instead_of_raising(lua_only):
    # fakeredis's Lua JSON is Python's: tests/integration/test_taking.py takes these from Redis.
    item = task_message(DISPATCH_TASK, "t1", [message()], QUEUE).replace('"retries": 0', lua_only)

    taken = Taken.parse(item.encode(), "tag-1")

    assert (taken.tag, taken.task_id, taken.raw) == ("tag-1", "tag-1", item.encode())
    assert taken.problem.startswith("an item that is not JSON kombu can read")


def test_an_item_with_bytes_that_are_not_utf8_is_read_as_kombu_reads_it():
    item = task_message(DISPATCH_TASK, "t1", [message()], QUEUE).encode()

    taken = Taken.parse(item.replace(b'"lang": "py"', b'"lang": "p\xff"'), "tag-1")

    assert (taken.problem, taken.task_id) == (None, "t1")


def test_a_run_whose_taking_fails_still_sends_the_batch_of_its_own_message(
    monkeypatch, client, taker, registry, dead_letters
):
    registry.listener("article", name="bulk", batch=10)(ignore)

    def broken(*args):
        raise RuntimeError("a bug in taking")

    monkeypatch.setattr(taker, "take", broken)
    run = DispatchRun(registry, dead_letters, QUEUE, taker)
    run.handle(Delivery(message()))

    run.take_more()
    run.finish()

    assert len(listener_tasks(client, registry, "bulk")) == 1
    assert list(dead_letters) == []


@pytest.mark.parametrize("raises", ["before its tasks are kept", "after its tasks are kept"])
def test_a_taken_message_whose_handling_raises_is_left_to_the_sweep_and_the_rest_given_back(
    monkeypatch, client, taker, registry, dead_letters, raises
):
    registry.listener("article", name="search.index")(ignore)
    ids = [queue_dispatch(client, message(number=number)) for number in range(3)]
    run = DispatchRun(registry, dead_letters, QUEUE, taker)
    real_handle = run.handle

    def handle(delivery):
        if delivery.task_id != ids[1]:
            return real_handle(delivery)
        if raises.startswith("after"):
            real_handle(delivery)
        raise RuntimeError("a bug in handling")

    monkeypatch.setattr(run, "handle", handle)

    run.take_more()
    run.finish()

    assert [json.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)] == [ids[2]]
    [left] = client.hkeys("unacked")
    assert json.loads(client.hget("unacked", left))[0]["headers"]["id"] == ids[1]
    assert [task["headers"]["id"] for task in listener_tasks(client, registry, "search.index")] == [
        f"{ids[0]}:search.index"
    ]


SENT = message()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [([], {"message": SENT}), ([SENT, ["search.index"]], {})],
    ids=["message-as-keyword", "only-as-second-argument"],
)
def test_a_dispatch_message_sent_with_other_forms_of_its_arguments_is_taken_as_celery_runs_it(
    client, taker, args, kwargs
):
    client.lpush(QUEUE, celery_envelope(args=args, kwargs=kwargs))

    [taken] = taker.take(QUEUE, 10, 1 << 20)

    assert taken.problem is None
    assert taken.message == SENT
    assert taken.only == (["search.index"] if args else None)


def test_taking_binds_arguments_as_the_dispatch_task_s_signature_does():
    from tasks.broker.taken import _dispatch_arguments
    from tasks.dispatch.task import dispatch

    taken = list(inspect.signature(_dispatch_arguments).parameters.values())
    task = list(inspect.signature(dispatch.run).parameters.values())
    assert [(p.name, p.kind, p.default) for p in taken] == [
        (p.name, p.kind, p.default) for p in task
    ]


def celery_app(url, **conf):
    app = Celery("taker-of", broker=url, set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.mark.parametrize(
    ("url", "conf"),
    [
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=CERT_REQUIRED", {}),
        ("redis://127.0.0.1:1/0", {"broker_use_ssl": {"ssl_cert_reqs": "required"}}),
        ("redis://127.0.0.1:1/0", {"broker_transport_options": {"sentinel_kwargs": {}}}),
        ("redis+socket:///tmp/redis.sock?virtual_host=2", {}),
        ("sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380", {}),
    ],
    ids=["rediss-query", "broker_use_ssl", "other-transport-option", "socket-query", "sentinel"],
)
def test_dispatch_takes_nothing_where_the_taker_could_not_connect_as_kombu_does(url, conf):
    assert taker_of(celery_app(url, **conf)) is None


def test_a_plain_redis_broker_has_a_taker_with_the_transport_s_options():
    options = {"visibility_timeout": 7, "socket_timeout": 3, "unacked_restore_interval": 1}
    app = celery_app("redis://127.0.0.1:1/0", broker_transport_options=options)

    taker = taker_of(app)

    assert taker.visibility_timeout == 7
    assert taker.client.connection_pool.connection_kwargs["socket_timeout"] == 3


class Decoded(dict):
    """A message that counts how many times it is decoded (decode reads its version first)."""

    decoded = 0

    def get(self, key, default=None):
        if key == "version":
            self.decoded += 1
        return super().get(key, default)


def test_dispatch_decodes_each_message_once(client, taker, registry, dead_letters):
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    data = Decoded(message())
    run = DispatchRun(registry, dead_letters, QUEUE, taker)

    assert sorted(run.handle(Delivery(data))) == ["mail.new_article", "search.index"]
    assert data.decoded == 1
