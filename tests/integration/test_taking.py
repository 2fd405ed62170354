"""Taking dispatch messages from a real Redis, whose Lua JSON reads more than Python's: nothing
kombu's sweep cannot read is left unacknowledged, and nothing stays stuck behind it."""

from __future__ import annotations

import json
import time

import fakeredis
import pytest
import redis
from celery import Celery
from kombu import Connection

from notifier.wire.message import DISPATCH_TASK, encode
from notifier.wire.protocol import task_message
from tasks.broker.taking import Taker
from tasks.dead_letters import DeadLetters
from tasks.dispatch.run import DispatchRun
from tasks.listeners.registry import Registry
from tests.integration.conftest import module_redis_server
from tests.support.processes import RedisServer

QUEUE = "notifier"


broker = module_redis_server()


@pytest.fixture
def client(broker: RedisServer) -> redis.Redis:
    client = redis.Redis.from_url(broker.url)
    client.flushdb()  # this module's own redis-server
    return client


def message(number: int) -> str:
    payload = {"resource_name": "article", "action": "create", "uri": "/articles"}
    data = encode(payload, [{"new": {"id": f"a{number}"}}], [0], "req").as_dict()
    return task_message(DISPATCH_TASK, f"t{number}", [data], QUEUE)


def lua_only(number: int) -> str:
    """A dispatch message that Redis's Lua reads and Python's JSON does not: a hex number."""
    return message(number).replace('"retries": 0', '"retries": 0x0')


def sweep(broker: RedisServer) -> None:
    """kombu's restore of the messages unacknowledged past the visibility timeout."""
    with Connection(broker.url, transport_options={"visibility_timeout": 1}) as connection:
        connection.default_channel.qos.restore_visible(num=100)  # raised on what it cannot read


def ignore(event: object) -> None:
    pass


def run(client: redis.Redis, *, visibility_timeout: float = 30) -> tuple[DispatchRun, Registry]:
    registry = Registry(Celery("taking", broker="memory://", set_as_current=False))
    registry.listener("article", name="search.index")(ignore)
    registry.listener("article", name="mail.new_article")(ignore)
    taker = Taker(client, visibility_timeout=visibility_timeout)
    dispatch_run = DispatchRun(registry, DeadLetters(fakeredis.FakeRedis()), QUEUE, taker)
    return dispatch_run, registry


def test_an_item_only_redis_lua_reads_is_a_dead_letter_and_the_messages_around_it_go_on(client):
    for number in range(20):
        client.lpush(QUEUE, message(number))
        if number == 10:
            client.lpush(QUEUE, lua_only(99))
    dispatch_run, registry = run(client)

    dispatch_run.take_more()
    dispatch_run.finish()

    sent = client.lrange(registry["search.index"].queue, 0, -1)
    assert len(sent) == 20
    [letter] = dispatch_run.dead_letters
    assert "an item that is not JSON kombu can read" in letter.reason
    assert "0x0" in letter.message["item"]
    assert (client.hlen("unacked"), client.zcard("unacked_index"), client.llen(QUEUE)) == (0, 0, 0)


def test_kombu_s_sweep_still_restores_a_dead_worker_s_messages_after_an_unreadable_item(
    broker, client
):
    client.lpush(QUEUE, message(1))
    dead = Taker(client, visibility_timeout=1)
    dead.hold = lambda tags: None  # type: ignore[method-assign]  # a worker that died
    [taken] = dead.take(QUEUE, 1, 1 << 20)
    client.lpush(QUEUE, lua_only(2))
    dispatch_run, _ = run(client)
    dispatch_run.take_more()
    dispatch_run.finish()
    time.sleep(1.2)

    sweep(broker)

    assert [json.loads(item)["headers"]["id"] for item in client.lrange(QUEUE, 0, -1)] == ["t1"]
    assert client.hlen("unacked") == 0
    assert taken.task_id == "t1"
