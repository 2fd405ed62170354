"""request.notify_resource_changed through a real Pyramid app: what is published, and when.

The publisher is the only fake: ``notifier.publisher.CeleryPublisher`` is replaced before
``includeme`` builds it, so the real settings, subscriber, merging and pyramid_tm hooks run.
"""

import logging
import socket
import time

import pytest
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPBadRequest
from pyramid.request import Request
from pyramid.response import Response
from webtest import TestApp

from notifier.events import ResourceChanged
from notifier.wire.message import decode
from tests.unit.fakes import BrokenPublisher, RecordingDataManager, RecordingPublisher


def notify_create(request, article_id="a1"):
    request.notify_resource_changed(
        "create", "article", article_id, new={"id": article_id, "last_modified": 1700000000000}
    )


def join_recording_transaction(request, fail_on_commit=False):
    manager = request.tm
    manager.get().join(
        RecordingDataManager(manager, request.registry["test.timeline"], fail_on_commit)
    )


def create_view(request):
    if request.environ.get("tm.active"):
        join_recording_transaction(request)
    notify_create(request)
    return Response("created", status=201)


def batch_view(request):
    """Delete x, re-create it, delete it again; then change an article elsewhere."""
    request.notify_resource_changed("delete", "article", "x", old={"id": "x", "v": 1})
    request.notify_resource_changed("create", "article", "x", new={"id": "x", "v": 2})
    request.notify_resource_changed("delete", "article", "x", old={"id": "x", "v": 2})
    request.notify_resource_changed(
        "update", "comment", "c1", new={"id": "c1", "v": 2}, old={"id": "c1", "v": 1}
    )
    return Response("done")


def raising_view(request):
    notify_create(request)
    raise RuntimeError("the view failed after notifying")


def bad_request_view(request):
    notify_create(request)
    raise HTTPBadRequest()


def error_status_view(request):
    notify_create(request)
    return Response("no", status=int(request.params["status"]))


def doomed_view(request):
    join_recording_transaction(request)
    notify_create(request)
    request.tm.doom()
    return Response("doomed but fine")


def failing_commit_view(request):
    join_recording_transaction(request, fail_on_commit=True)
    notify_create(request)
    return Response("the commit will fail")


def two_transactions_view(request):
    """Commit a first change, begin again, then fail after a second change."""
    join_recording_transaction(request)
    notify_create(request, "first")
    request.tm.commit()
    request.tm.begin()
    join_recording_transaction(request)
    notify_create(request, "second")
    if request.params.get("fail"):
        raise RuntimeError("the second transaction fails")
    return Response("done")


def batch_of_subrequests_view(request):
    """Create an article through a subrequest, as batch views do; then maybe fail."""
    join_recording_transaction(request)
    subrequest = Request.blank("/create", method="POST")
    if request.params.get("parent"):
        subrequest.parent = request
    request.invoke_subrequest(subrequest, use_tweens=False)
    request.timeline.append("subrequest answered")
    if request.params.get("doom"):
        request.tm.doom()
    return Response("batch done")


def no_change_view(request):
    return Response("nothing changed")


def server_error_view(exc, request):
    return Response("server error", status=500)


def make_app(monkeypatch, *, transaction_manager=True, settings=None, publisher=RecordingPublisher):
    """A Pyramid app including notifier; returns the WebTest app, the publisher and a timeline."""
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("NOTIFIER_ROUTES", raising=False)
    timeline = []
    monkeypatch.setattr(
        "notifier.publisher.CeleryPublisher",
        lambda broker_url, timeout: publisher(broker_url, timeout, timeline),
    )
    all_settings = {"tm.manager_hook": "pyramid_tm.explicit_manager", **(settings or {})}
    with Configurator(settings=all_settings) as config:
        if transaction_manager:
            config.include("pyramid_tm")
        config.include("notifier")
        config.registry["test.timeline"] = timeline
        config.add_request_method(lambda request: timeline, "timeline", reify=True)
        config.registry["test.resource_changed"] = []

        def record_resource_changed(event):
            timeline.append(f"ResourceChanged {event.payload['action']}")
            event.request.registry["test.resource_changed"].append(event)

        config.add_subscriber(record_resource_changed, ResourceChanged)
        for name, view in [
            ("create", create_view),
            ("batch", batch_view),
            ("raise", raising_view),
            ("bad-request", bad_request_view),
            ("error-status", error_status_view),
            ("doom", doomed_view),
            ("failing-commit", failing_commit_view),
            ("nothing", no_change_view),
            ("two-transactions", two_transactions_view),
            ("subrequests", batch_of_subrequests_view),
        ]:
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name)
        config.add_view(server_error_view, context=LookupError)
        registry = config.registry
    return TestApp(config.make_wsgi_app()), registry["notifier.publisher"], timeline


# -- with pyramid_tm ---------------------------------------------------------------------------


def test_each_transaction_of_a_request_publishes_its_own_changes_after_its_commit(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch)

    app.post("/two-transactions")

    assert timeline == [
        "ResourceChanged create", "committed", "published create",
        "ResourceChanged create", "committed", "published create",
    ]  # fmt: skip
    first, second = publisher.messages
    assert [first.payload["article_id"], second.payload["article_id"]] == ["first", "second"]
    assert (first.positions, second.positions) == ([0], [1])
    assert first.request_id == second.request_id


@pytest.mark.parametrize("parent", ["", "1"], ids=["invoke_subrequest", "parent-attribute"])
def test_a_subrequest_change_is_published_after_the_parents_commit(monkeypatch, parent):
    app, publisher, timeline = make_app(monkeypatch)

    app.post(f"/subrequests?parent={parent}")

    assert timeline == [
        "subrequest answered", "ResourceChanged create", "committed", "published create"
    ]  # fmt: skip
    assert len(publisher.messages) == 1


@pytest.mark.parametrize("parent", ["", "1"], ids=["invoke_subrequest", "parent-attribute"])
def test_a_subrequest_change_is_not_published_when_the_parent_rolls_back(monkeypatch, parent):
    app, publisher, timeline = make_app(monkeypatch)

    app.post(f"/subrequests?parent={parent}&doom=1")

    assert publisher.messages == []
    assert timeline == ["subrequest answered", "aborted"]


def test_a_request_whose_second_transaction_fails_publishes_only_the_first(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch)

    with pytest.raises(RuntimeError, match="the second transaction fails"):
        app.post("/two-transactions?fail=1")

    assert [message.payload["article_id"] for message in publisher.messages] == ["first"]
    assert timeline[-1] == "aborted"


def test_a_committed_change_is_published_once_after_the_commit(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch)

    app.post("/create", status=201)

    assert timeline == ["ResourceChanged create", "committed", "published create"]
    ((message, queue),) = publisher.published
    assert queue == "notifier"
    assert message.resource_name == "article"
    assert message.action == "create"
    assert message.payload["article_id"] == "a1"
    assert message.payload["uri"] == "/create"
    assert message.impacted_records == [{"new": {"id": "a1", "last_modified": 1700000000000}}]
    assert message.positions == [0]


def test_the_timestamp_defaults_to_the_new_records_last_modified(monkeypatch):
    app, publisher, _ = make_app(monkeypatch)

    app.post("/create", status=201)

    assert publisher.messages[0].payload["timestamp"] == 1700000000000


def test_a_view_that_raises_after_notifying_publishes_nothing(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch)

    with pytest.raises(RuntimeError, match="failed after notifying"):
        app.post("/raise")

    assert publisher.published == []
    assert timeline == []


def test_a_view_whose_error_is_rendered_by_an_exception_view_publishes_nothing(monkeypatch):
    app, publisher, _ = make_app(monkeypatch)

    app.post("/bad-request", status=400)

    assert publisher.published == []


def test_a_doomed_transaction_publishes_nothing(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch)

    app.post("/doom", status=200)

    assert publisher.published == []
    assert timeline == ["aborted"]


def test_a_commit_that_fails_publishes_nothing(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch)

    with pytest.raises(RuntimeError, match="refused the commit"):
        app.post("/failing-commit")

    assert publisher.published == []
    assert timeline[0] == "ResourceChanged create"
    assert "aborted" in timeline
    assert "committed" not in timeline


def test_a_transaction_vetoed_for_its_error_status_publishes_nothing(monkeypatch):
    app, publisher, _ = make_app(
        monkeypatch, settings={"tm.commit_veto": "pyramid_tm.default_commit_veto"}
    )

    app.post("/error-status?status=409", status=409)

    assert publisher.published == []


def test_resource_changed_fires_before_the_commit_with_the_same_merged_events(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch)

    app.post("/batch")

    resource_changed = app.app.registry["test.resource_changed"]
    assert [
        (event.payload, event.impacted_records, event.positions) for event in resource_changed
    ] == [
        (message.payload, message.impacted_records, message.positions)
        for message in publisher.messages
    ]
    assert timeline.index("ResourceChanged delete") < timeline.index("published delete")


def test_a_batch_is_merged_per_resource_and_action_and_keeps_its_order(monkeypatch):
    app, publisher, _ = make_app(monkeypatch)

    app.post("/batch")

    deleted, created, updated = publisher.messages
    assert (deleted.resource_name, deleted.action) == ("article", "delete")
    assert deleted.impacted_records == [{"old": {"id": "x", "v": 1}}, {"old": {"id": "x", "v": 2}}]
    assert deleted.positions == [0, 2]
    assert (created.resource_name, created.action) == ("article", "create")
    assert created.positions == [1]
    assert (updated.resource_name, updated.action) == ("comment", "update")
    assert updated.impacted_records == [{"new": {"id": "c1", "v": 2}, "old": {"id": "c1", "v": 1}}]
    assert updated.positions == [3]


def test_the_messages_of_one_request_share_a_request_id_and_have_their_own_event_ids(monkeypatch):
    app, publisher, _ = make_app(monkeypatch)

    app.post("/batch")
    app.post("/create", status=201)

    first_request, second_request = publisher.messages[:3], publisher.messages[3:]
    assert len({message.request_id for message in first_request}) == 1
    assert first_request[0].request_id != second_request[0].request_id
    assert len({message.event_id for message in publisher.messages}) == 4


def test_a_request_that_changes_nothing_publishes_nothing(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch)

    app.get("/nothing")

    assert publisher.published == []
    assert timeline == []


def test_each_request_publishes_only_its_own_changes(monkeypatch):
    app, publisher, _ = make_app(monkeypatch)

    app.post("/create", status=201)
    app.post("/create", status=201)

    assert [len(message.impacted_records) for message in publisher.messages] == [1, 1]


def test_messages_go_to_the_queue_of_the_routing_table(monkeypatch):
    app, publisher, _ = make_app(
        monkeypatch, settings={"notifier.routes": "article.*=articles *.update=updates"}
    )

    app.post("/batch")

    assert [queue for _, queue in publisher.published] == ["articles", "articles", "updates"]


def test_actions_left_out_of_notifier_actions_are_not_published(monkeypatch):
    app, publisher, _ = make_app(monkeypatch, settings={"notifier.actions": "create"})

    app.post("/batch")

    assert [message.action for message in publisher.messages] == ["create"]


def test_resources_left_out_of_notifier_resources_are_not_published(monkeypatch):
    app, publisher, _ = make_app(monkeypatch, settings={"notifier.resources": "comment"})

    app.post("/batch")

    assert [message.resource_name for message in publisher.messages] == ["comment"]


def test_filtered_out_events_still_fire_resource_changed(monkeypatch):
    app, publisher, _ = make_app(monkeypatch, settings={"notifier.resources": "comment"})

    app.post("/batch")

    assert len(app.app.registry["test.resource_changed"]) == 3
    assert len(publisher.published) == 1


def test_a_broker_that_refuses_does_not_fail_the_request_and_is_one_warning_with_the_cause(
    monkeypatch, caplog
):
    app, publisher, _ = make_app(monkeypatch, publisher=BrokenPublisher)

    with caplog.at_level(logging.INFO, logger="notifier"):
        response = app.post("/create", status=201)

    assert response.text == "created"
    ((message, queue),) = publisher.published
    (record,) = [r for r in caplog.records if r.name == "notifier"]
    assert record.levelno == logging.WARNING
    assert message.event_id in record.getMessage()
    assert "article" in record.getMessage()
    assert "(ConnectionError: Error 111 connecting to localhost:6379" in record.getMessage()
    assert record.getMessage().endswith("kept in the spool, to publish later")
    assert record.exc_info is None  # what the spool is for: no traceback
    assert (record.event_id, record.queue) == (message.event_id, queue)


def test_the_publisher_is_built_from_the_settings(monkeypatch):
    _, publisher, _ = make_app(
        monkeypatch,
        settings={"notifier.broker_url": "redis://broker:6379/5", "notifier.publish_timeout": "2"},
    )

    assert publisher.broker_url == "redis://broker:6379/5"
    assert publisher.timeout == 2.0


def test_a_bad_setting_fails_at_start_up(monkeypatch):
    from notifier.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"notifier\.actions"):
        make_app(monkeypatch, settings={"notifier.actions": "destroy"})


# -- without a transaction manager ---------------------------------------------------------------


def test_without_pyramid_tm_a_successful_response_publishes(monkeypatch):
    app, publisher, timeline = make_app(monkeypatch, transaction_manager=False)

    app.post("/create", status=201)

    assert [message.action for message in publisher.messages] == ["create"]
    assert timeline == ["ResourceChanged create", "published create"]


@pytest.mark.parametrize("status", [400, 404, 409, 500, 503])
def test_without_pyramid_tm_an_error_response_publishes_nothing(monkeypatch, status):
    app, publisher, timeline = make_app(monkeypatch, transaction_manager=False)

    app.post(f"/error-status?status={status}", status=status)

    assert publisher.published == []
    assert timeline == []


def test_without_pyramid_tm_a_raised_http_error_publishes_nothing(monkeypatch):
    app, publisher, _ = make_app(monkeypatch, transaction_manager=False)

    app.post("/bad-request", status=400)

    assert publisher.published == []


def test_without_pyramid_tm_an_unhandled_exception_publishes_nothing(monkeypatch):
    app, publisher, _ = make_app(monkeypatch, transaction_manager=False)

    with pytest.raises(RuntimeError):
        app.post("/raise")

    assert publisher.published == []


def test_without_pyramid_tm_a_batch_is_merged_the_same_way(monkeypatch):
    app, publisher, _ = make_app(monkeypatch, transaction_manager=False)

    app.post("/batch")

    assert [(m.action, m.positions) for m in publisher.messages] == [
        ("delete", [0, 2]),
        ("create", [1]),
        ("update", [3]),
    ]


# -- the request method itself -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"action": "create", "new": None, "old": None}, "needs new=, old= or both"),
        ({"action": "destroy", "new": None, "old": {"id": "a1"}}, "destroy"),
    ],
    ids=["without-new-or-old", "unknown-action"],
)
def test_a_bad_change_is_refused_when_notified(no_notifier_environ, arguments, error):
    def view(request):
        request.notify_resource_changed(
            arguments["action"], "article", "a1", new=arguments["new"], old=arguments["old"]
        )
        return Response("unreachable")

    with Configurator(settings={"notifier.broker_url": "memory://"}) as config:
        config.include("notifier")
        config.add_route("bad", "/bad")
        config.add_view(view, route_name="bad")
    app = TestApp(config.make_wsgi_app())

    with pytest.raises(ValueError, match=error):
        app.post("/bad")


def test_includeme_registers_the_subscriber_for_resource_changed(monkeypatch):
    app, publisher, _ = make_app(monkeypatch)
    registry = app.app.registry
    request = Request.blank("/articles/a1")  # without a transaction: published at once
    request.registry = registry
    event = ResourceChanged(
        {"resource_name": "article", "action": "update", "uri": "/articles/a1"},
        [{"new": {"id": "a1"}, "old": {"id": "a1"}}],
        request,
    )

    registry.notify(event)

    assert [message.payload for message in publisher.messages] == [event.payload]
    assert decode(publisher.messages[0].as_dict()) == publisher.messages[0]


def test_a_hung_broker_neither_fails_nor_holds_up_a_write_request(monkeypatch, caplog):
    monkeypatch.delenv("NOTIFIER_ROUTES", raising=False)
    with socket.socket() as hung_broker:
        hung_broker.bind(("127.0.0.1", 0))
        hung_broker.listen(8)
        host, port = hung_broker.getsockname()
        settings = {
            "notifier.broker_url": f"redis://{host}:{port}/0",
            "notifier.publish_timeout": "0.25",
            "tm.manager_hook": "pyramid_tm.explicit_manager",
        }
        with Configurator(settings=settings) as config:
            config.include("pyramid_tm")
            config.include("notifier")
            config.add_route("create", "/create")
            config.add_view(create_view, route_name="create")
        config.registry["test.timeline"] = []
        app = TestApp(config.make_wsgi_app())
        started = time.monotonic()

        with caplog.at_level(logging.WARNING, logger="notifier"):
            app.post("/create", status=201)

        assert time.monotonic() - started < 2
        config.registry["notifier.publisher"].close()
    assert "could not publish event" in caplog.text
