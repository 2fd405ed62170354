"""tasks.app: the listener queues a worker consumes, and how -Q and -X change them."""

import importlib
from types import SimpleNamespace

import pytest

from tasks.app import _consume_listener_queues, _remember_queue_options, consume

# tasks.app is also the name of the Celery app that the tasks package exports.
app_module = importlib.import_module("tasks.app")


class RecordingQueues:
    def __init__(self):
        self.added = []

    def select_add(self, queue):
        self.added.append(queue.name)


@pytest.fixture
def worker(monkeypatch):
    monkeypatch.setattr(app_module, "_listener_queues", app_module._ListenerQueues())
    consume("notifier.listener.search")
    consume("updates")
    queues = RecordingQueues()
    return SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=queues))), queues


def start(worker, **options):
    _remember_queue_options(options={"queues": None, "exclude_queues": None, **options})
    _consume_listener_queues(instance=worker)


def test_a_worker_consumes_the_queue_of_every_listener_it_has(worker):
    instance, queues = worker

    start(instance)

    assert queues.added == ["notifier.listener.search", "updates"]


def test_queues_chosen_with_dash_q_are_left_as_they_are(worker):
    instance, queues = worker

    start(instance, queues=["articles"])

    assert queues.added == []


@pytest.mark.parametrize("excluded", [["updates"], "updates"])
def test_queues_excluded_with_dash_x_are_not_consumed(worker, excluded):
    instance, queues = worker

    start(instance, exclude_queues=excluded)

    assert queues.added == ["notifier.listener.search"]
