"""tasks.dispatch.inline: the first attempt of a message's lone listener, run in dispatch, ends as
that listener's own task would: Celery's Ignore and Reject are no failures.

The registry is wired as a worker's (tests/unit/conftest.py): its run wrappers count the run."""

import pytest
from celery.exceptions import Ignore, Reject

from notifier.wire.message import decode
from tasks.dispatch import inline
from tests.unit.builders import message


@pytest.fixture(autouse=True)
def worker(wired):
    return wired


def alone(registry, function, **options):
    """Register ``function`` as the only listener of articles, consumed by this worker."""
    registry.listener("article", name="search.index", **options)(function)
    registry.app.amqp.queues.select_add(registry["search.index"].queue)
    return registry["search.index"]


def run_alone(data, registry, dead_letters):
    """Run ``data``'s listener in dispatch, as a dispatch run does: decoded once."""
    decoded = decode(data)
    return inline.run_alone(decoded, data, registry.matching(decoded), dead_letters)


def sent_by(monkeypatch, listener):
    sent = []
    monkeypatch.setattr(listener.task, "apply_async", lambda **options: sent.append(options))
    return sent


def test_a_listener_that_raises_ignore_in_dispatch_is_ignored_not_dead_lettered(
    monkeypatch, registry, dead_letters
):
    def skip_drafts(event):
        raise Ignore()

    sent = sent_by(monkeypatch, alone(registry, skip_drafts))

    assert run_alone(message(), registry, dead_letters) == ["search.index"]
    assert list(dead_letters) == []
    assert sent == []


def test_a_listener_that_rejects_its_message_in_dispatch_drops_it_without_a_dead_letter(
    monkeypatch, registry, dead_letters
):
    def reject(event):
        raise Reject(MemoryError("too large"), requeue=False)

    # Not retried: with the default autoretry_for=(Exception,), Celery retries a Reject too.
    sent = sent_by(monkeypatch, alone(registry, reject, autoretry_for=(ValueError,)))

    assert run_alone(message(), registry, dead_letters) == ["search.index"]
    assert list(dead_letters) == []
    assert sent == []


def test_a_listener_that_requeues_its_message_in_dispatch_has_it_sent_to_its_task(
    monkeypatch, registry, dead_letters
):
    def requeue(event):
        raise Reject("later", requeue=True)

    sent = sent_by(monkeypatch, alone(registry, requeue, autoretry_for=(ValueError,)))
    data = message()

    run_alone(data, registry, dead_letters)

    [options] = sent
    assert options["task_id"] == f"{data['event_id']}:search.index"
    assert (options["args"], options["retries"]) == ((data,), 0)
    assert list(dead_letters) == []


def test_on_a_celery_whose_internals_were_not_checked_each_listener_runs_as_its_own_task(
    monkeypatch, registry, dead_letters
):
    ran = []
    alone(registry, ran.append)
    monkeypatch.setattr(
        "tasks.broker.versions.installed_versions",
        lambda: {"celery": "5.99.0", "kombu": "5.99.0"},
    )

    assert run_alone(message(), registry, dead_letters) is None
    assert ran == []
