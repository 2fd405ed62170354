"""The consumer's channel on a real Redis: each message is registered as unacknowledged by the
command that takes it (tasks/broker/take.lua), so a consumer that dies after that command lost
nothing; what kombu cannot deliver is handed to ``on_unreadable`` and removed."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, ClassVar

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from notifier.wire.protocol import task_message
from tasks.broker import AtomicChannel
from tests.integration.conftest import module_redis_server
from tests.support.processes import RedisServer, wait_until


class RecordingChannel(AtomicChannel):
    unreadable: ClassVar[list[tuple[str, bytes, str]]] = []

    def on_unreadable(self, queue: str, item: bytes, problem: str) -> None:
        self.unreadable.append((queue, item, problem))


broker = module_redis_server()


@pytest.fixture
def client(broker: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(broker.url)
    client.flushall()  # this module's own redis-server
    client.config_resetstat()
    RecordingChannel.unreadable = []
    return client


def queue(name: str) -> Queue:
    return Queue(name, Exchange(name), routing_key=name)


def connection(broker: RedisServer, **options: Any) -> Connection:
    connection = Connection(broker.url, transport_options=options)
    connection.transport.Channel = RecordingChannel  # as tasks/broker/consumer.py sets it
    return connection


def publish(broker: RedisServer, name: str, body: Any, **options: Any) -> None:
    with Connection(broker.url, transport_options=options) as sender:
        Producer(sender.channel()).publish(
            body, exchange=queue(name).exchange, routing_key=name, declare=[queue(name)]
        )


class Taking:
    """A consumer of ``names`` on its own channel of ``connection``, which acks nothing."""

    def __init__(self, connection: Connection, names: list[str]) -> None:
        self.connection = connection
        self.received: list[Any] = []
        self.channel = connection.channel()
        Consumer(
            self.channel,
            [queue(name) for name in names],
            callbacks=[lambda body, message: self.received.append(message)],
            accept=["json"],
        ).consume()

    def take(self, count: int, timeout: float = 5) -> list[Any]:
        """The next ``count`` messages."""
        wanted = len(self.received) + count
        deadline = time.monotonic() + timeout
        while len(self.received) < wanted and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.connection.drain_events(timeout=0.2)
        return self.received[wanted - count :]

    def send_take(self) -> None:
        """Have the channel send its take, as the worker's event loop would."""
        self.channel.connection.cycle._register_BRPOP(self.channel)


def test_a_taken_message_is_unacknowledged_before_the_consumer_reads_it(broker, client):
    publish(broker, "q", {"n": 1})
    dying = connection(broker)
    taking = Taking(dying, ["q"])

    taking.send_take()  # its reply is never read
    wait_until(lambda: client.llen("q") == 0, 5, "the message taken")

    [(tag, entry)] = client.hgetall("unacked").items()
    assert client.zscore("unacked_index", tag) is not None
    message, exchange, routing_key = json.loads(entry)
    assert (message["properties"]["delivery_tag"], exchange, routing_key) == (
        tag.decode(),
        "q",
        "q",
    )
    taking.channel.client.connection.disconnect()  # the consumer dies
    taking.channel._in_poll = None
    dying.release()

    time.sleep(1.1)
    with Connection(broker.url, transport_options={"visibility_timeout": 1}) as sweeper:
        sweeper.default_channel.qos.restore_visible(num=10)
    assert client.hlen("unacked") == 0
    [restored] = client.lrange("q", 0, -1)
    assert json.loads(restored)["properties"]["delivery_info"]["redelivered"] is True


def test_messages_come_as_with_brpop_and_acks_remove_what_the_take_registered(broker, client):
    for number in range(3):
        publish(broker, "first", {"n": number})
    publish(broker, "second", {"n": 99})
    with connection(broker) as consuming:
        received = Taking(consuming, ["first", "second"]).take(4)
        assert sorted(message.payload["n"] for message in received) == [0, 1, 2, 99]
        assert client.hlen("unacked") == 4
        # kombu's QoS.append wrote nothing over what the take registered: its raw item.
        [entry] = [
            value for value in client.hvals("unacked") if b'"routing_key": "second"' in value
        ]
        assert entry.endswith(b',"second","second"]')
        for message in received:
            message.ack()
    assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)
    stats = client.info("commandstats")
    assert "cmdstat_brpop" not in stats  # no command pops without registering
    assert stats["cmdstat_evalsha"]["calls"] >= 4


def test_items_kombu_cannot_deliver_are_handed_over_and_removed_and_the_next_comes(broker, client):
    good = task_message("notifier.dispatch", "t1", [{}], "q").encode()
    no_delivery_info = json.dumps(
        {"body": "", "headers": {}, "properties": {"delivery_tag": "x"}}
    ).encode()
    lua_only = good.replace(b'"priority": 0', b'"priority": 0x0')  # Redis's JSON reads it
    client.lpush("q", b"not json", no_delivery_info, lua_only, good)

    with connection(broker) as consuming:
        [message] = Taking(consuming, ["q"]).take(1)
        message.ack()

    assert message.headers["id"] == "t1"
    problems = [
        (queue, problem.split(" (")[0]) for queue, _, problem in RecordingChannel.unreadable
    ]
    assert problems == [
        ("q", "not JSON"),
        ("q", "a kombu envelope without a delivery tag, exchange or routing key"),
        ("q", "not JSON"),
    ]
    assert (client.llen("q"), client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0, 0)


def test_the_global_key_prefix_and_the_order_of_priorities_are_kombu_s(broker, client):
    options = {"global_keyprefix": "app:"}
    publish(broker, "q", {"n": "plain"}, **options)
    with Connection(broker.url, transport_options=options) as sender:
        Producer(sender.channel()).publish(
            {"n": "nine"}, exchange="q", routing_key="q", declare=[queue("q")], priority=9
        )
    assert sorted(client.keys("app:q*")) == [b"app:q", b"app:q\x06\x169"]

    with connection(broker, **options) as consuming:
        taking = Taking(consuming, ["q"])
        taking.send_take()
        wait_until(lambda: client.hlen("app:unacked") == 1, 5, "one message taken")
        assert client.zcard("app:unacked_index") == 1
        # kombu's BRPOP order: every queue's plain list (priority 0) first.
        assert client.keys("app:q*") == [b"app:q\x06\x169"]
        [message] = taking.take(1)
        message.ack()
    assert message.payload == {"n": "plain"}
    assert client.hlen("app:unacked") == 0


def test_a_message_comes_after_the_scripts_were_flushed(broker, client):
    with connection(broker) as consuming:
        taking = Taking(consuming, ["q"])
        publish(broker, "q", {"n": 1})
        [first] = taking.take(1)
        client.script_flush()
        publish(broker, "q", {"n": 2})
        [second] = taking.take(1)
        first.ack()
        second.ack()
    assert second.payload == {"n": 2}
    assert client.hlen("unacked") == 0


def test_the_sweep_sets_aside_an_entry_it_cannot_read_and_restores_those_behind_it(broker, client):
    good = task_message("notifier.dispatch", "t1", [{}], "q")
    tag = json.loads(good)["properties"]["delivery_tag"]
    # What the take script registers for an item only Redis's Lua JSON reads, when the worker
    # died before it removed it; then a dead worker's message, older.
    client.hset("unacked", "bad", '[{"properties": {"priority": 0x0}}, "q", "q"]')
    client.hset("unacked", tag, f'[{good}, "", "q"]')
    client.zadd("unacked_index", {"bad": time.time() - 10, tag: time.time() - 20})

    with connection(broker, visibility_timeout=1) as sweeping:
        sweeping.default_channel.qos.restore_visible(num=10)

    [(queue, entry, problem)] = RecordingChannel.unreadable
    assert (queue, problem) == (
        "unacked",
        "an unacknowledged entry kombu cannot read, set aside for the sweep to go on",
    )
    assert b"0x0" in entry
    [restored] = client.lrange("q", 0, -1)
    assert json.loads(restored)["headers"]["id"] == "t1"
    assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)
