"""Publishing on every commit: in a real Kinto 26 (in process, memory backends), a ``/batch``
that meets a 409 aborts its transaction and runs the rest in a new one, which commits. What
the new transaction committed is published, once; what the aborted one made is not.

The publisher is the only fake: ``notifier.publisher.CeleryPublisher`` is replaced before
Kinto loads the listener. (Kinto's memory backend keeps the aborted writes, as it takes no
part in transactions; its PostgreSQL backend rolls them back: tests/integration has that.)
"""

import base64

import kinto
import pytest
from webtest import TestApp

from notifier.commits import committed_records
from tests.unit.fakes import RecordingPublisher

AUTH = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
RECORDS = "/buckets/b/collections/c/records"
CELERY_LISTENER = {
    "event_listeners": "celery",
    "event_listeners.celery.use": "notifier.listeners.celery",
}
NOTIFIER_INCLUDED = {"includes": "tests.integration.kinto_app notifier"}


@pytest.fixture
def publisher(monkeypatch):
    recording = RecordingPublisher("memory://", 1)
    monkeypatch.setattr("notifier.publisher.CeleryPublisher", lambda *args: recording)
    return recording


def kinto_app(**settings):
    app = TestApp(
        kinto.main(
            {},
            http_scheme="https",  # else Kinto warns, and warnings are errors here
            storage_backend="kinto.core.storage.memory",
            cache_backend="kinto.core.cache.memory",
            permission_backend="kinto.core.permission.memory",
            userid_hmac_secret="a-secret-for-the-tests-only",
            bucket_create_principals="system.Everyone",
            **{"multiauth.policies": "basicauth", "includes": "tests.integration.kinto_app"}
            | settings,
        )
    )
    app.put_json("/v1/buckets/b", {"data": {}}, headers=AUTH)
    app.put_json("/v1/buckets/b/collections/c", {"data": {}}, headers=AUTH)
    return app


@pytest.fixture(params=["event listener", "kinto.includes"])
def app(request, publisher):
    """Kinto with notifier's celery listener, in either of the two ways Kinto takes it."""
    app = kinto_app(**(CELERY_LISTENER if request.param == "event listener" else NOTIFIER_INCLUDED))
    publisher.messages.clear()
    return app


def create(record_id):
    return {"method": "POST", "path": RECORDS, "body": {"data": {"id": record_id}}}


CONFLICT = {"method": "POST", "path": "/__conflict__"}


def batch(app, *requests):
    response = app.post_json("/v1/batch", {"requests": list(requests)}, headers=AUTH)
    return [subresponse["status"] for subresponse in response.json["responses"]]


def test_a_batch_publishes_what_committed_after_a_conflict_and_not_what_was_rolled_back(
    app, publisher
):
    statuses = batch(app, create("r1"), create("r2"), CONFLICT, create("r3"), create("r4"))

    assert statuses == [201, 201, 409, 201, 201]
    assert publisher.records() == [["r3", "r4"]]


def test_a_batch_with_two_conflicts_publishes_only_what_followed_the_last(app, publisher):
    statuses = batch(app, create("r1"), CONFLICT, create("r2"), CONFLICT, create("r3"))

    assert statuses == [201, 409, 201, 409, 201]
    assert publisher.records() == [["r3"]]


def test_a_batch_that_ends_with_a_conflict_publishes_no_record(app, publisher):
    batch(app, create("r1"), create("r2"), CONFLICT)

    assert publisher.records() == []


def test_a_batch_without_conflict_is_published_once_as_one_merged_event(app, publisher):
    batch(app, create("r1"), create("r2"), create("r3"))

    assert publisher.records() == [["r1", "r2", "r3"]]


def test_a_write_is_published_once_although_kinto_notifies_it_after_the_commit_too(app, publisher):
    app.post_json(f"/v1{RECORDS}", {"data": {"id": "r1"}}, headers=AUTH)

    assert publisher.records() == [["r1"]]


def test_the_records_after_a_conflict_keep_their_numbering_from_zero(publisher):
    app = kinto_app(**CELERY_LISTENER)
    publisher.messages.clear()

    batch(app, create("r1"), CONFLICT, create("r2"), create("r3"))

    (message,) = publisher.messages
    assert message.positions == [0, 1]


def test_reads_are_published_after_the_commit_when_asked(publisher):
    app = kinto_app(**CELERY_LISTENER, **{"event_listeners.celery.actions": "create read"})
    app.post_json(f"/v1{RECORDS}", {"data": {"id": "r1"}}, headers=AUTH)
    publisher.messages.clear()

    app.get(f"/v1{RECORDS}/r1", headers=AUTH)

    assert [(m.action, m.resource_name) for m in publisher.messages] == [("read", "record")]


def test_without_a_request_every_record_counts_as_committed():
    records = [{"new": {"id": "r1"}}]

    assert committed_records(None, records) is records
