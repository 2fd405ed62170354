"""Configured listeners (``notifier.event_listeners``) in real Pyramid apps, and the celery one.

This module is also the listener module the apps name: ``.use = tests.unit.test_listeners``
loads :func:`load_from_config` below, which writes each call into the app's timeline. The
Celery publisher is the other fake: ``notifier.publisher.CeleryPublisher`` is replaced before
any listener builds one.
"""

import logging
import os

import pytest
from kinto.core.events import AfterResourceChanged as KintoAfterResourceChanged
from kinto.core.events import ResourceChanged as KintoResourceChanged
from pyramid.config import Configurator
from pyramid.response import Response
from pyramid.settings import asbool
from webtest import TestApp

from notifier.errors import ConfigurationError
from notifier.events import AfterResourceChanged, ResourceChanged, impacted_records_of
from notifier.listeners import Forwarder, ListenerBase, env_prefix, forwarder_options
from notifier.listeners import celery as celery_listener
from notifier.settings import parse_settings
from notifier.subscriber import Subscriber
from tests.unit.conftest import kinto_events
from tests.unit.fakes import (
    FakeRequest,
    RecordingDataManager,
    RecordingPublisher,
    changes_view,
    kinto_event,
    raising_view,
)

THIS_MODULE = __name__

# -- the listener module the apps configure ------------------------------------------------------


class RecordingListener(ListenerBase):
    """Writes each call into the app's timeline; raises after writing when told to fail."""

    def __init__(self, name, timeline, fail=False):
        self.name = name
        self.timeline = timeline
        self.fail = fail

    def __call__(self, event):
        self.record(event)

    def record(self, event):
        self.timeline.append(
            f"{self.name}: {type(event).__name__} "
            f"{event.payload['action']} {event.payload['resource_name']}"
        )
        if self.fail:
            raise RuntimeError(f"{self.name} is broken")


class RecordingForwarder(Forwarder, RecordingListener):
    """Like RecordingListener, but it does its work once the transaction committed."""

    def __call__(self, event):
        Forwarder.__call__(self, event)

    def after_commit(self, event):
        self.record(event)


def load_from_config(config, prefix):
    """``.use = tests.unit.test_listeners``: options ``greeting``, ``fail``, ``after_commit``."""
    options = forwarder_options(config, prefix)
    _, greeting = options.get("greeting")
    _, fail = options.get("fail", "false")
    _, after_commit = options.get("after_commit", "false")
    config.registry["test.loaded"].append((prefix, greeting))
    name = prefix.rstrip(".").rsplit(".", 1)[-1]
    timeline = config.registry["test.timeline"]
    if asbool(after_commit):
        listener = RecordingForwarder(name, timeline, asbool(fail))
        listener.subscribe(config, prefix)
        return listener
    return RecordingListener(name, timeline, asbool(fail))


# -- the app -------------------------------------------------------------------------------------


def join_recording_transaction(request):
    if request.environ.get("tm.active"):
        request.tm.get().join(RecordingDataManager(request.tm, request.registry["test.timeline"]))


def create_view(request):
    join_recording_transaction(request)
    request.notify_resource_changed("create", "article", "a1", new={"id": "a1"})
    return Response("created", status=201)


def doomed_view(request):
    join_recording_transaction(request)
    request.notify_resource_changed("create", "article", "a1", new={"id": "a1"})
    request.tm.doom()
    return Response("doomed but fine")


def make_app(monkeypatch, settings, *, transaction_manager=True):
    """A Pyramid app including notifier; returns the WebTest app, its timeline, and every
    publisher built."""
    timeline, publishers = [], []

    def build_publisher(broker_url, timeout):
        publisher = RecordingPublisher(
            broker_url, timeout, timeline, note="published {action} {resource_name}"
        )
        publishers.append(publisher)
        return publisher

    monkeypatch.setattr("notifier.publisher.CeleryPublisher", build_publisher)
    with Configurator(
        settings={"tm.manager_hook": "pyramid_tm.explicit_manager", **settings}
    ) as config:
        config.registry["test.timeline"] = timeline
        config.registry["test.loaded"] = []
        if transaction_manager:
            config.include("pyramid_tm")
        config.include("notifier")
        for name, view in [
            ("create", create_view),
            ("changes", changes_view),
            ("doom", doomed_view),
            ("raise", raising_view),
        ]:
            config.add_route(name, f"/{name}")
            config.add_view(view, route_name=name)
    return TestApp(config.make_wsgi_app()), timeline, publishers


def loaded(app):
    return app.app.registry["test.loaded"]


def listener_settings(*names, **options):
    """``notifier.event_listeners = <names>``, each using this module; ``options`` are
    ``<name>__<option>=value``."""
    settings = {"notifier.event_listeners": " ".join(names)}
    for name in names:
        settings[f"notifier.event_listeners.{name}.use"] = THIS_MODULE
    for key, value in options.items():
        name, option = key.split("__")
        settings[f"notifier.event_listeners.{name}.{option}"] = value
    return settings


@pytest.fixture(autouse=True)
def no_event_listeners_environ(monkeypatch):
    """Keep the process's NOTIFIER_EVENT_LISTENERS* variables out of these apps."""
    for variable in list(os.environ):
        if variable.startswith(("NOTIFIER_EVENT_LISTENERS", "KINTO_EVENT_LISTENERS")):
            monkeypatch.delenv(variable)


# -- configured listeners in a plain Pyramid app --------------------------------------------------


def test_each_listener_named_in_event_listeners_is_loaded_from_its_use_module(monkeypatch):
    app, timeline, _ = make_app(monkeypatch, listener_settings("a", "b"))

    app.post("/create", status=201)

    assert loaded(app) == [("notifier.event_listeners.a.", ""), ("notifier.event_listeners.b.", "")]
    assert timeline == [
        "a: ResourceChanged create article",
        "b: ResourceChanged create article",
        "committed",
    ]


def test_a_module_named_directly_in_event_listeners_reads_its_options_under_its_last_name(
    monkeypatch,
):
    app, timeline, _ = make_app(
        monkeypatch,
        {
            "notifier.event_listeners": THIS_MODULE,
            "notifier.event_listeners.test_listeners.greeting": "hi",
        },
    )

    app.post("/create", status=201)

    assert loaded(app) == [("notifier.event_listeners.test_listeners.", "hi")]
    assert timeline == ["test_listeners: ResourceChanged create article", "committed"]


def test_two_instances_of_one_module_each_get_their_own_prefix_options_and_filters(monkeypatch):
    app, timeline, _ = make_app(
        monkeypatch,
        listener_settings(
            "english",
            "french",
            english__greeting="hello",
            english__actions="create",
            french__greeting="bonjour",
            french__resources="comment",
        ),
    )

    app.post("/changes")

    assert loaded(app) == [
        ("notifier.event_listeners.english.", "hello"),
        ("notifier.event_listeners.french.", "bonjour"),
    ]
    assert timeline == [
        "english: ResourceChanged create article",
        "french: ResourceChanged update comment",
    ]


def test_a_listener_hears_create_update_and_delete_of_every_resource_by_default(monkeypatch):
    app, timeline, _ = make_app(monkeypatch, listener_settings("a"))

    app.post("/changes")

    assert timeline == [
        "a: ResourceChanged create article",
        "a: ResourceChanged update comment",
        "a: ResourceChanged delete article",
    ]


def test_a_listener_hears_read_only_when_its_actions_name_it(monkeypatch):
    app, timeline, _ = make_app(monkeypatch, listener_settings("a", a__actions="read delete"))

    app.post("/changes")

    assert timeline == ["a: ResourceChanged delete article", "a: ResourceChanged read article"]


def test_a_listener_hears_only_the_resources_it_names(monkeypatch):
    app, timeline, _ = make_app(monkeypatch, listener_settings("a", a__resources="comment"))

    app.post("/changes")

    assert timeline == ["a: ResourceChanged update comment"]


def test_options_under_the_listeners_prefix_are_handed_to_load_from_config(monkeypatch):
    app, _, _ = make_app(monkeypatch, listener_settings("a", a__greeting="hello"))

    assert loaded(app) == [("notifier.event_listeners.a.", "hello")]


def test_settings_given_as_lists_in_code_are_read_like_an_ini_files(monkeypatch):
    settings = listener_settings("a", "b")
    settings["notifier.event_listeners"] = ["a", "b"]
    settings["notifier.event_listeners.a.actions"] = ["create", "delete"]

    app, timeline, _ = make_app(monkeypatch, settings)
    app.post("/changes")

    assert [line for line in timeline if line.startswith("a:")] == [
        "a: ResourceChanged create article",
        "a: ResourceChanged delete article",
    ]


def test_an_environment_variable_overrides_the_listeners_module(monkeypatch):
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_A_USE", THIS_MODULE)

    app, _, _ = make_app(
        monkeypatch,
        {"notifier.event_listeners": "a", "notifier.event_listeners.a.use": "no.such.module"},
    )

    assert loaded(app) == [("notifier.event_listeners.a.", "")]


def test_environment_variables_override_the_listeners_actions_and_resources(monkeypatch):
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_A_ACTIONS", "delete read")
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_A_RESOURCES", "article")

    app, timeline, _ = make_app(
        monkeypatch, listener_settings("a", a__actions="update", a__resources="comment")
    )
    app.post("/changes")

    assert timeline == ["a: ResourceChanged delete article", "a: ResourceChanged read article"]


def test_an_environment_variable_overrides_an_option_of_the_listener_itself(monkeypatch):
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_A_GREETING", "from the environment")

    app, _, _ = make_app(monkeypatch, listener_settings("a", a__greeting="from the settings"))

    assert loaded(app) == [("notifier.event_listeners.a.", "from the environment")]


def test_notifier_event_listeners_in_the_environment_names_the_listeners(monkeypatch):
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS", "b")
    settings = listener_settings("a", "b")
    del settings["notifier.event_listeners"]

    app, timeline, publishers = make_app(monkeypatch, settings)
    app.post("/create", status=201)

    assert loaded(app) == [("notifier.event_listeners.b.", "")]
    assert timeline == ["b: ResourceChanged create article", "committed"]
    assert publishers == []


def test_notifier_event_listeners_in_the_environment_wins_over_the_setting(monkeypatch):
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS", "b")

    app, _, _ = make_app(monkeypatch, listener_settings("a", "b"))

    assert loaded(app) == [("notifier.event_listeners.b.", "")]


def test_a_raising_listener_is_logged_by_name_and_stops_neither_the_others_nor_the_request(
    monkeypatch, caplog
):
    app, timeline, _ = make_app(monkeypatch, listener_settings("broken", "good", broken__fail="1"))

    with caplog.at_level(logging.ERROR, logger="notifier"):
        response = app.post("/create", status=201)

    assert response.text == "created"
    assert timeline == [
        "broken: ResourceChanged create article",
        "good: ResourceChanged create article",
        "committed",
    ]
    (record,) = [r for r in caplog.records if r.name == "notifier"]
    assert "listener broken failed" in record.getMessage()
    assert "create article /create" in record.getMessage()
    assert record.exc_info[0] is RuntimeError


@pytest.mark.parametrize("transaction_manager", [True, False], ids=["pyramid_tm", "no-tm"])
def test_an_after_commit_listener_that_raises_neither_stops_the_others_nor_fails_the_request(
    monkeypatch, caplog, transaction_manager
):
    app, timeline, _ = make_app(
        monkeypatch,
        listener_settings(
            "broken", "good", broken__after_commit="1", broken__fail="1", good__after_commit="1"
        ),
        transaction_manager=transaction_manager,
    )

    with caplog.at_level(logging.ERROR):
        response = app.post("/create", status=201)

    assert response.text == "created"
    assert [line for line in timeline if line != "committed"] == [
        "broken: AfterResourceChanged create article",
        "good: AfterResourceChanged create article",
    ]
    assert any(
        r.name == "notifier" and "broken" in r.getMessage() and r.exc_info for r in caplog.records
    )


def test_configured_listeners_are_called_with_resource_changed_inside_the_transaction(
    monkeypatch,
):
    app, timeline, _ = make_app(monkeypatch, listener_settings("a"))

    app.post("/create", status=201)

    assert timeline == ["a: ResourceChanged create article", "committed"]


def test_a_doomed_request_calls_no_configured_listener(monkeypatch):
    app, timeline, _ = make_app(monkeypatch, listener_settings("a"))

    app.post("/doom")

    assert timeline == ["aborted"]


def test_without_pyramid_tm_configured_listeners_hear_a_successful_response_only(monkeypatch):
    app, timeline, _ = make_app(monkeypatch, listener_settings("a"), transaction_manager=False)

    with pytest.raises(RuntimeError, match="failed after notifying"):
        app.post("/raise")
    app.post("/create", status=201)

    assert timeline == ["a: ResourceChanged create article"]


def test_with_event_listeners_set_the_default_celery_subscriber_is_not_registered(monkeypatch):
    app, _, publishers = make_app(monkeypatch, listener_settings("a"))

    app.post("/create", status=201)

    assert publishers == []
    assert "notifier.publisher" not in app.app.registry


def test_with_the_celery_listener_configured_a_write_is_published_once_not_twice(monkeypatch):
    app, _, publishers = make_app(
        monkeypatch,
        {
            "notifier.event_listeners": "celery",
            "notifier.event_listeners.celery.use": "notifier.listeners.celery",
        },
    )

    app.post("/create", status=201)

    (publisher,) = publishers
    assert [(m.action, m.resource_name) for m in publisher.messages] == [("create", "article")]


# -- setting errors ------------------------------------------------------------------------------

CELERY = {
    "notifier.event_listeners": "celery",
    "notifier.event_listeners.celery.use": "notifier.listeners.celery",
}


@pytest.mark.parametrize(
    ("settings", "key", "allowed"),
    [
        (
            {"notifier.event_listeners": "a"},
            "notifier.event_listeners.a.use",
            "is missing: the module of the listener, e.g. notifier.listeners.redis",
        ),
        (
            {"notifier.event_listeners": "a", "notifier.event_listeners.a.use": "no.such.module"},
            "notifier.event_listeners.a.use",
            "a module with load_from_config(config, prefix)",
        ),
        (
            {
                "notifier.event_listeners": "a",
                "notifier.event_listeners.a.use": "notifier.settings",
            },
            "notifier.event_listeners.a.use",
            "a module with load_from_config(config, prefix)",
        ),
        (
            {"notifier.event_listeners": "no.such.module"},
            "notifier.event_listeners",
            "a module with load_from_config(config, prefix)",
        ),
        (
            listener_settings("a", a__actions="create destroy"),
            "notifier.event_listeners.a.actions",
            "a list of actions among: create update delete read",
        ),
        (
            listener_settings("a", a__actions=""),
            "notifier.event_listeners.a.actions",
            "at least one action",
        ),
        (
            listener_settings("a", a__resources="article blog-post"),
            "notifier.event_listeners.a.resources",
            "resource names are letters, digits and _",
        ),
        (
            {**CELERY, "notifier.event_listeners.celery.brokerurl": "redis://broker:6379/0"},
            "notifier.event_listeners.celery.brokerurl",
            "known settings are notifier.event_listeners.celery.broker_url",
        ),
        (
            {**CELERY, "notifier.event_listeners.celery.broker_url": "http://broker:6379/0"},
            "notifier.event_listeners.celery.broker_url",
            "a URL whose scheme is one of redis, rediss",
        ),
        (
            {**CELERY, "notifier.event_listeners.celery.publish_timeout": "0"},
            "notifier.event_listeners.celery.publish_timeout",
            "a number of seconds in (0, 60]",
        ),
        (
            {**CELERY, "notifier.event_listeners.celery.publish_timeout": "soon"},
            "notifier.event_listeners.celery.publish_timeout",
            "a number of seconds in (0, 60]",
        ),
        (
            {**CELERY, "notifier.event_listeners.celery.publish_timeout": "61"},
            "notifier.event_listeners.celery.publish_timeout",
            "a number of seconds in (0, 60]",
        ),
        (
            {**CELERY, "notifier.event_listeners.celery.routes": "article=articles"},
            "notifier.event_listeners.celery.routes",
            "write a route as <resource_name>.<action>=<queue>",
        ),
        (
            {**CELERY, "notifier.event_listeners.celery.actions": "destroy"},
            "notifier.event_listeners.celery.actions",
            "a list of actions among",
        ),
    ],
    ids=[
        "missing-use",
        "use-not-a-module",
        "use-without-load_from_config",
        "dotted-name-not-a-module",
        "unknown-action",
        "no-action",
        "bad-resource-name",
        "celery-unknown-option",
        "celery-bad-broker-url",
        "celery-zero-publish-timeout",
        "celery-publish-timeout-not-a-number",
        "celery-publish-timeout-too-long",
        "celery-bad-routes",
        "celery-unknown-action",
    ],
)
def test_a_bad_listener_setting_fails_at_start_up_naming_the_key_and_what_is_allowed(
    monkeypatch, settings, key, allowed
):
    with pytest.raises(ConfigurationError) as error:
        make_app(monkeypatch, settings)

    assert error.value.key == key
    assert str(error.value).startswith(f"{key} ")
    assert allowed in str(error.value)


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("NOTIFIER_EVENT_LISTENERS_A_USE", "no.such.module", "a module with load_from_config"),
        ("NOTIFIER_EVENT_LISTENERS_A_ACTIONS", "destroy", "a list of actions among"),
        ("NOTIFIER_EVENT_LISTENERS_A_RESOURCES", "blog-post", "resource names are letters"),
    ],
)
def test_a_bad_environment_variable_fails_at_start_up_naming_the_variable(
    monkeypatch, variable, value, allowed
):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError) as error:
        make_app(monkeypatch, listener_settings("a"))

    assert error.value.key == variable
    assert str(error.value) == f"{variable} = {value!r} is not valid: {error.value.allowed}"
    assert allowed in error.value.allowed


def test_a_bad_celery_listener_option_from_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_CELERY_BROKER_URL", "amqp://broker//")

    with pytest.raises(ConfigurationError, match="a URL whose scheme") as error:
        make_app(monkeypatch, CELERY)

    assert error.value.key == "NOTIFIER_EVENT_LISTENERS_CELERY_BROKER_URL"


# -- notifier.listeners.celery -------------------------------------------------------------------


def test_the_celery_listener_publishes_a_committed_write_once_after_the_commit(monkeypatch):
    app, timeline, publishers = make_app(monkeypatch, CELERY)

    app.post("/create", status=201)

    assert timeline == ["committed", "published create article"]
    ((message, queue),) = publishers[0].published
    assert queue == "notifier"
    assert message.payload["article_id"] == "a1"
    assert message.impacted_records == [{"new": {"id": "a1"}}]


def test_the_celery_listener_publishes_nothing_for_a_rolled_back_request(monkeypatch):
    app, timeline, publishers = make_app(monkeypatch, CELERY)

    app.post("/doom")
    with pytest.raises(RuntimeError, match="failed after notifying"):
        app.post("/raise")

    assert publishers[0].published == []
    assert timeline == ["aborted"]


def test_the_celery_listener_uses_its_own_broker_url_timeout_routes_and_filters(monkeypatch):
    app, _, publishers = make_app(
        monkeypatch,
        {
            **CELERY,
            "notifier.event_listeners.celery.broker_url": "redis://listener-broker:6379/3",
            "notifier.event_listeners.celery.publish_timeout": "2",
            "notifier.event_listeners.celery.routes": "article.*=articles *.*=others",
            "notifier.event_listeners.celery.actions": "create delete",
            "notifier.event_listeners.celery.resources": "article",
        },
    )

    app.post("/changes")

    (publisher,) = publishers
    assert (publisher.broker_url, publisher.timeout) == ("redis://listener-broker:6379/3", 2.0)
    assert [(m.action, m.resource_name, queue) for m, queue in publisher.published] == [
        ("create", "article", "articles"),
        ("delete", "article", "articles"),
    ]


def test_two_celery_listeners_each_publish_to_their_own_broker(monkeypatch):
    app, _, publishers = make_app(
        monkeypatch,
        {
            "notifier.event_listeners": "articles comments",
            "notifier.event_listeners.articles.use": "notifier.listeners.celery",
            "notifier.event_listeners.articles.broker_url": "redis://articles:6379/0",
            "notifier.event_listeners.articles.resources": "article",
            "notifier.event_listeners.comments.use": "notifier.listeners.celery",
            "notifier.event_listeners.comments.broker_url": "redis://comments:6379/0",
            "notifier.event_listeners.comments.resources": "comment",
        },
    )

    app.post("/changes")

    assert [
        (p.broker_url, [(m.action, m.resource_name) for m in p.messages]) for p in publishers
    ] == [
        ("redis://articles:6379/0", [("create", "article"), ("delete", "article")]),
        ("redis://comments:6379/0", [("update", "comment")]),
    ]


def test_the_celery_listener_option_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_CELERY_BROKER_URL", "redis://from-environ:6379/2")

    _, _, publishers = make_app(
        monkeypatch, {**CELERY, "notifier.event_listeners.celery.broker_url": "redis://x:6379/0"}
    )

    assert publishers[0].broker_url == "redis://from-environ:6379/2"


class RecordingSubscriber:
    """The Subscriber's interface: what it was asked to publish, in order."""

    def __init__(self):
        self.events = []

    def prepare(self, event):
        return [event]

    def write_to_outbox(self, outgoing, request):
        pass

    def publish(self, outgoing, request):
        self.events.extend(outgoing)

    def __call__(self, event):
        self.publish(self.prepare(event), event.request)


def test_the_celery_listener_publishes_a_change_outside_any_transaction_at_once():
    subscriber = RecordingSubscriber()
    listener = celery_listener.CeleryForwarder(subscriber)
    payload = {"resource_name": "article", "action": "create", "uri": "/articles"}

    listener(ResourceChanged(payload, [{"new": {"id": "a1"}}]))
    listener(kinto_event(KintoResourceChanged))

    assert [type(event) for event in subscriber.events] == [
        AfterResourceChanged,
        KintoAfterResourceChanged,
    ]
    assert [impacted_records_of(event) for event in subscriber.events] == [
        [{"new": {"id": "a1"}}],
        kinto_event(KintoResourceChanged).impacted_objects,
    ]


def test_the_celery_listener_ignores_the_hosts_own_after_commit_events():
    subscriber = RecordingSubscriber()
    listener = celery_listener.CeleryForwarder(subscriber)
    ours = AfterResourceChanged(
        {"resource_name": "article", "action": "create", "uri": "/articles"},
        [{"new": {"id": "a1"}}],
    )

    listener(ours)
    listener(kinto_event(KintoAfterResourceChanged))

    assert subscriber.events == []


def test_kintos_change_notified_in_the_app_is_published_once_though_kinto_notifies_it_twice(
    monkeypatch,
):
    app, _, publishers = make_app(monkeypatch, CELERY)
    event = kinto_event(KintoAfterResourceChanged)

    app.app.registry.notify(kinto_event(KintoResourceChanged))
    app.app.registry.notify(event)

    (message,) = publishers[0].messages
    assert message.payload == event.payload
    assert message.impacted_records == event.impacted_objects


def test_the_celery_listener_loaded_as_kinto_loads_it_reads_kintos_variables(monkeypatch):
    monkeypatch.setenv("KINTO_EVENT_LISTENERS_CELERY_BROKER_URL", "redis://from-environ:6379/4")
    monkeypatch.setattr(
        "notifier.publisher.CeleryPublisher",
        lambda broker_url, timeout: RecordingPublisher(broker_url, timeout, []),
    )
    config = Configurator(
        settings={
            "settings_prefix": "kinto",
            "event_listeners": "celery",
            "event_listeners.celery.use": "notifier.listeners.celery",
            "event_listeners.celery.broker_url": "redis://from-settings:6379/0",
            "event_listeners.celery.publish_timeout": "3",
        }
    )

    listener = celery_listener.load_from_config(config, "event_listeners.celery.")

    assert listener.subscriber.publisher.broker_url == "redis://from-environ:6379/4"
    assert listener.subscriber.publisher.timeout == 3.0


@pytest.mark.parametrize(
    ("project", "prefix", "expected"),
    [
        (None, "notifier.event_listeners.redis.", ""),
        ("kinto", "event_listeners.redis.", "kinto."),
        ("kinto", "kinto.event_listeners.redis.", ""),
    ],
)
def test_the_environment_variables_of_kintos_listeners_keep_kintos_name(project, prefix, expected):
    settings = {} if project is None else {"settings_prefix": project}

    assert env_prefix(Configurator(settings=settings), prefix) == expected


# -- the Subscriber with Kinto's AfterResourceChanged --------------------------------------------


def kinto_subscriber():
    publisher = RecordingPublisher()
    return Subscriber(parse_settings({}, environ={}), publisher), publisher


BATCH = kinto_events("AfterResourceChanged")


def batch_events(request_for):
    """The AfterResourceChanged events of the recorded Kinto batch, as Kinto's own objects."""
    recorded = [e for e in BATCH if e["step"] == "extra_batch_mixed"]
    return [
        KintoAfterResourceChanged(e["payload"], e["impacted_objects"], request_for(index))
        for index, e in enumerate(recorded)
    ]


def test_a_kinto_events_impacted_objects_become_the_messages_impacted_records():
    subscriber, publisher = kinto_subscriber()
    event = kinto_event(KintoAfterResourceChanged, "extra_delete_plural_records")

    subscriber(event)

    (message,) = publisher.messages
    assert message.payload == event.payload
    assert message.impacted_records == event.impacted_objects
    assert message.positions == [0, 1, 2, 3, 4]


def test_the_kinto_events_of_one_request_are_numbered_on_from_one_event_to_the_next():
    subscriber, publisher = kinto_subscriber()
    request = FakeRequest()

    for event in batch_events(lambda index: request):
        subscriber(event)

    assert [len(m.impacted_records) for m in publisher.messages] == [1, 2, 1, 1]
    assert [m.positions for m in publisher.messages] == [[0], [1, 2], [3], [4]]
    assert len({m.request_id for m in publisher.messages}) == 1


def test_the_subrequests_of_a_kinto_batch_share_the_parents_request_id_and_numbering():
    subscriber, publisher = kinto_subscriber()
    batch = FakeRequest()
    subrequests = [FakeRequest(parent=batch) for _ in range(4)]

    for event in batch_events(lambda index: subrequests[index]):
        subscriber(event)

    assert [m.positions for m in publisher.messages] == [[0], [1, 2], [3], [4]]
    assert len({m.request_id for m in publisher.messages}) == 1
    assert len({m.event_id for m in publisher.messages}) == 4


def test_a_kinto_event_of_another_request_starts_at_zero_with_its_own_request_id():
    subscriber, publisher = kinto_subscriber()

    subscriber(kinto_event(KintoAfterResourceChanged, "create_record_1"))
    subscriber(kinto_event(KintoAfterResourceChanged, "create_record_2"))

    first, second = publisher.messages
    assert first.positions == second.positions == [0]
    assert first.request_id != second.request_id


@pytest.mark.parametrize("setting", ["broker_url", "routes", "actions"])
def test_publishing_settings_beside_configured_listeners_fail_at_start_up(monkeypatch, setting):
    with pytest.raises(ConfigurationError) as raised:
        make_app(monkeypatch, {**CELERY, f"notifier.{setting}": "anything"})

    assert str(raised.value).startswith(f"notifier.{setting} = 'anything' is not valid")
    assert f"e.g. notifier.event_listeners.celery.{setting}" in str(raised.value)


def test_kinto_includes_notifier_beside_a_celery_event_listener_fails_at_start_up(monkeypatch):
    settings = {
        "settings_prefix": "kinto",
        "event_listeners": "celery",
        "event_listeners.celery.use": "notifier.listeners.celery",
    }

    with pytest.raises(ConfigurationError) as raised, Configurator(settings=settings) as config:
        config.include("notifier")

    assert "kinto.includes = notifier or a notifier.listeners.celery event listener (celery)" in (
        str(raised.value)
    )
