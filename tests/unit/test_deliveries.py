"""tasks.dispatch.within_deliveries: a listener whose whole worker dies each time is stopped."""

import importlib
import logging
from types import SimpleNamespace

import fakeredis
import pytest
import redis
from celery import signals

from tasks.dead_letters import DeadLetters

dispatch_module = importlib.import_module("tasks.dispatch")


@pytest.fixture
def dead_letters(monkeypatch):
    store = DeadLetters(fakeredis.FakeRedis())
    monkeypatch.setattr(dispatch_module, "dead_letters", lambda: store)
    return store


def running(task_id="e1:search.index", max_retries=2):
    return SimpleNamespace(
        name="search.index", max_retries=max_retries, request=SimpleNamespace(id=task_id)
    )


def test_a_listener_runs_while_its_deliveries_stay_within_its_attempts_and_one_more(dead_letters):
    task = running(max_retries=2)

    runs = [dispatch_module.within_deliveries(task, {"event_id": "e1"}) for _ in range(5)]

    assert runs == [True, True, True, True, False]
    (letter,) = dead_letters
    assert letter.reason == "delivered 5 times without finishing: its worker died each time"
    assert letter.message == {"event_id": "e1"}
    assert letter.attempts == 4


def test_each_message_has_its_own_count(dead_letters):
    for task_id in ("e1:a", "e2:a", "e3:a"):
        assert dispatch_module.within_deliveries(running(task_id, max_retries=0), {})


def test_a_listener_called_directly_is_not_counted(dead_letters):
    task = SimpleNamespace(name="x", max_retries=0, request=SimpleNamespace(id=None))

    assert all(dispatch_module.within_deliveries(task, {}) for _ in range(5))
    assert len(dead_letters) == 0


class UnreachableRedis(fakeredis.FakeRedis):
    def pipeline(self, *args, **kwargs):
        raise redis.ConnectionError("Connection refused")


def test_a_failed_listeners_message_is_logged_whole_when_the_dead_letters_are_out_of_reach(
    monkeypatch, caplog
):
    store = DeadLetters(UnreachableRedis())
    monkeypatch.setattr(dispatch_module, "dead_letters", lambda: store)
    registry = dispatch_module.registry

    class FailedTask:
        name = "tests.unreachable"
        request = SimpleNamespace(retries=0, delivery_info={"routing_key": "q"})

    task = FailedTask()
    monkeypatch.setattr(
        registry, "_listeners", {"l": SimpleNamespace(name="l", task=task)}, raising=False
    )

    with caplog.at_level(logging.CRITICAL, logger="notifier"):
        signals.task_failure.send(
            sender=task, exception=RuntimeError("boom"), args=[{"event_id": "e9"}], kwargs={}
        )

    assert 'the dead letters are out of reach; its message: {"event_id": "e9"}' in caplog.text


def test_a_delivery_sent_back_to_its_queue_unrun_is_not_counted(dead_letters):
    # An ordered listener whose objects were busy goes back to its queue: not an attempt.
    task = running(max_retries=0)
    for _ in range(5):
        assert dispatch_module.within_deliveries(task, {"event_id": "e1"})
        dispatch_module.forget_delivery(task)

    runs = [dispatch_module.within_deliveries(task, {"event_id": "e1"}) for _ in range(3)]

    assert runs == [True, True, False]


class RedisThatCannotCount(fakeredis.FakeRedis):
    def decr(self, *args, **kwargs):
        raise redis.ConnectionError("Connection refused")


def test_a_delivery_stays_counted_when_redis_is_out_of_reach(monkeypatch):
    store = DeadLetters(RedisThatCannotCount())
    monkeypatch.setattr(dispatch_module, "dead_letters", lambda: store)

    dispatch_module.forget_delivery(running())


def test_the_workers_registry_orders_listeners_and_uncounts_their_deferred_deliveries():
    registry = dispatch_module.registry

    assert registry.order_guard is dispatch_module.order_guard
    assert registry.on_defer is dispatch_module.forget_delivery
