"""notifier.listeners.redis: Cliquet's Redis list listener, against fakeredis.

In the apps, ``redis.BlockingConnectionPool.from_url`` is replaced by one that records how it
was called and hands back a pool of fakeredis connections; everything else is real: the
settings, pyramid_tm's hooks, the listener and the redis client.
"""

import json
import logging
import os
import warnings

import fakeredis
import pytest
import redis
from kinto.core.events import AfterResourceChanged as KintoAfterResourceChanged
from kinto.core.events import ResourceChanged as KintoResourceChanged
from pyramid.config import Configurator
from pyramid.response import Response
from webtest import TestApp

from notifier.errors import ConfigurationError
from notifier.events import AfterResourceChanged, ResourceChanged
from notifier.listeners import redis as redis_listener
from notifier.settings import EventFilter, Options
from tests.unit.fakes import (
    FakeRequest,
    RecordingDataManager,
    changes_view,
    kinto_event,
    raising_view,
)

LIST = "notifier.events"
EVERYTHING = EventFilter.parse(Options({}, "x.", None))

# -- fakes ---------------------------------------------------------------------------------------


class DownRedis:
    """A client whose Redis is gone."""

    def __init__(self):
        self.attempts = 0

    def lpush(self, name, *values):
        self.attempts += 1
        raise redis.ConnectionError("Error 111 connecting to localhost:6379. Connection refused.")


class CommitWatcher(RecordingDataManager):
    """A transaction participant that looks at the Redis list when the transaction commits."""

    def __init__(self, reader, seen):
        super().__init__(None, seen)
        self.reader = reader

    def commit_note(self):
        return ("committed with", self.reader.llen(LIST))


# -- the app -------------------------------------------------------------------------------------


def create_view(request):
    if request.params.get("watch"):
        registry = request.registry
        request.tm.get().join(CommitWatcher(registry["test.reader"], registry["test.seen"]))
    article_id = request.params.get("id", "a1")
    request.notify_resource_changed(
        "create", "article", article_id, new={"id": article_id, "last_modified": 1700000000000}
    )
    return Response("created", status=201)


def doomed_view(request):
    request.notify_resource_changed("create", "article", "a1", new={"id": "a1"})
    request.tm.doom()
    return Response("doomed but fine")


@pytest.fixture(autouse=True)
def no_event_listeners_environ(monkeypatch):
    """Keep the process's NOTIFIER_EVENT_LISTENERS* variables out of these apps."""
    for variable in list(os.environ):
        if variable.startswith(("NOTIFIER_EVENT_LISTENERS", "KINTO_EVENT_LISTENERS")):
            monkeypatch.delenv(variable)


@pytest.fixture
def server():
    return fakeredis.FakeServer()


@pytest.fixture
def reader(server):
    """A client of the fake Redis, to read what the listener pushed."""
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def pools(monkeypatch, server):
    """How ``redis.BlockingConnectionPool.from_url`` was called; it gives fakeredis pools."""
    calls = []

    def from_url(url, **options):
        pool = fakeredis.FakeRedis(server=server).connection_pool
        calls.append((url, options, pool))
        return pool

    monkeypatch.setattr(redis.BlockingConnectionPool, "from_url", from_url)
    return calls


@pytest.fixture
def make_app(pools, reader):
    def make(options=None, *, settings=None):
        """An app with one redis listener, named ``redis``, with these options."""
        all_settings = {
            "tm.manager_hook": "pyramid_tm.explicit_manager",
            "notifier.event_listeners": "redis",
            "notifier.event_listeners.redis.use": "notifier.listeners.redis",
            **{f"notifier.event_listeners.redis.{k}": v for k, v in (options or {}).items()},
            **(settings or {}),
        }
        with Configurator(settings=all_settings) as config:
            config.registry["test.reader"] = reader
            config.registry["test.seen"] = []
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
        return TestApp(config.make_wsgi_app())

    return make


def pushed(reader, listname=LIST):
    """What the listener pushed, oldest first, decoded."""
    return [json.loads(item) for item in reversed(reader.lrange(listname, 0, -1))]


def created_payload(article_id="a1", uri="/create"):
    return {
        "timestamp": 1700000000000,
        "action": "create",
        "uri": uri,
        "user_id": None,
        "resource_name": "article",
        "article_id": article_id,
    }


# -- in a Pyramid app ----------------------------------------------------------------------------


def test_a_committed_write_is_pushed_as_its_json_payload_after_the_commit(make_app, reader):
    app = make_app()

    app.post("/create?watch=1", status=201)

    assert app.app.registry["test.seen"] == [("committed with", 0)]
    assert reader.lrange(LIST, 0, -1) == [json.dumps(created_payload()).encode()]


def test_events_are_pushed_with_lpush_so_that_rpop_reads_them_in_the_order_they_happened(
    make_app, reader
):
    app = make_app()

    app.post("/create?id=first", status=201)
    app.post("/create?id=second", status=201)

    assert json.loads(reader.lindex(LIST, 0))["article_id"] == "second"
    assert json.loads(reader.rpop(LIST))["article_id"] == "first"
    assert json.loads(reader.rpop(LIST))["article_id"] == "second"


def test_a_rolled_back_request_pushes_nothing(make_app, reader):
    app = make_app()

    app.post("/doom")
    with pytest.raises(RuntimeError, match="failed after notifying"):
        app.post("/raise")

    assert reader.llen(LIST) == 0


def test_the_pool_has_bounded_timeouts_and_the_default_url_and_size(make_app, pools):
    make_app()

    [(url, options, pool)] = pools
    assert (url, options) == ("redis://localhost:6379/0", {"max_connections": 25, "timeout": 0.5})
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.5
    assert pool.connection_kwargs["socket_timeout"] == 0.5


def test_the_url_pool_size_and_timeout_come_from_the_listeners_options(make_app, pools):
    make_app({"url": "redis://cache:6379/2", "pool_size": "5", "timeout": "0.2"})

    [(url, options, pool)] = pools
    assert (url, options) == ("redis://cache:6379/2", {"max_connections": 5, "timeout": 0.2})
    assert pool.connection_kwargs["socket_connect_timeout"] == 0.2
    assert pool.connection_kwargs["socket_timeout"] == 0.2


def test_timeouts_in_the_url_do_not_loosen_the_listeners_bounds(make_app, pools):
    make_app({"url": "redis://cache:6379/2?socket_timeout=30", "timeout": "0.2"})

    [(_, _, pool)] = pools
    assert pool.connection_kwargs["socket_timeout"] == 0.2


def test_pool_timeout_bounds_the_wait_for_a_free_connection(make_app, pools):
    make_app({"pool_timeout": "0.1"})

    [(_, options, _)] = pools
    assert options["timeout"] == 0.1


def test_events_are_pushed_into_the_list_named_by_listname(make_app, reader):
    app = make_app({"listname": "kinto.events"})

    app.post("/create", status=201)

    assert reader.llen(LIST) == 0
    assert pushed(reader, "kinto.events") == [created_payload()]


def test_impacted_objects_are_pushed_only_with_include_impacted(make_app, reader):
    make_app({"listname": "bare"}).post("/create", status=201)
    make_app({"listname": "full", "include_impacted": "true"}).post("/create", status=201)

    assert pushed(reader, "bare") == [created_payload()]
    assert pushed(reader, "full") == [
        {
            **created_payload(),
            "impacted_objects": [{"new": {"id": "a1", "last_modified": 1700000000000}}],
        }
    ]


def test_create_update_and_delete_of_every_resource_are_pushed_by_default(make_app, reader):
    make_app().post("/changes")

    assert [(p["action"], p["resource_name"]) for p in pushed(reader)] == [
        ("create", "article"),
        ("update", "comment"),
        ("delete", "article"),
    ]


def test_only_the_actions_and_resources_the_listener_names_are_pushed(make_app, reader):
    make_app({"actions": "read delete update", "resources": "article"}).post("/changes")

    assert [(p["action"], p["resource_name"]) for p in pushed(reader)] == [
        ("delete", "article"),
        ("read", "article"),
    ]


def test_two_redis_listeners_push_each_into_their_own_list(make_app, reader):
    make_app(
        settings={
            "notifier.event_listeners": "articles comments",
            "notifier.event_listeners.articles.use": "notifier.listeners.redis",
            "notifier.event_listeners.articles.listname": "articles",
            "notifier.event_listeners.articles.resources": "article",
            "notifier.event_listeners.comments.use": "notifier.listeners.redis",
            "notifier.event_listeners.comments.listname": "comments",
            "notifier.event_listeners.comments.resources": "comment",
        }
    ).post("/changes")

    assert [p["action"] for p in pushed(reader, "articles")] == ["create", "delete"]
    assert [p["action"] for p in pushed(reader, "comments")] == ["update"]


def test_environment_variables_override_the_listeners_options(make_app, pools, reader, monkeypatch):
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_REDIS_URL", "redis://from-environ:6379/7")
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_REDIS_LISTNAME", "from-environ")
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_REDIS_INCLUDE_IMPACTED", "yes")
    monkeypatch.setenv("NOTIFIER_EVENT_LISTENERS_REDIS_ACTIONS", "update")

    make_app({"url": "redis://from-settings:6379/0", "listname": "from-settings"}).post("/changes")

    assert [url for url, _, _ in pools] == ["redis://from-environ:6379/7"]
    ((payload),) = pushed(reader, "from-environ")
    assert payload["action"] == "update"
    assert payload["impacted_objects"] == [{"new": {"id": "c1"}, "old": {"id": "c1"}}]


def test_a_redis_that_is_down_is_logged_and_the_request_still_succeeds(make_app, server, caplog):
    app = make_app()
    server.connected = False

    with caplog.at_level(logging.ERROR, logger="notifier"):
        response = app.post("/create", status=201)

    assert response.text == "created"
    (record,) = [r for r in caplog.records if r.name == "notifier"]
    assert record.getMessage() == (
        f"could not push event (create article /create) to the Redis list {LIST}"
    )
    assert record.exc_info[0] is redis.ConnectionError


def test_kintos_committed_events_notified_in_the_app_are_pushed(make_app, reader):
    app = make_app({"include_impacted": "true"})
    before, after = kinto_event(KintoResourceChanged), kinto_event(KintoAfterResourceChanged)

    app.app.registry.notify(before)
    app.app.registry.notify(after)

    assert pushed(reader) == [{**after.payload, "impacted_objects": after.impacted_objects}]


def test_the_listener_loaded_as_kinto_loads_it_reads_kintos_variables(pools, reader, monkeypatch):
    monkeypatch.setenv("KINTO_EVENT_LISTENERS_REDIS_LISTNAME", "from-environ")
    config = Configurator(
        settings={
            "settings_prefix": "kinto",
            "event_listeners": "redis",
            "event_listeners.redis.use": "notifier.listeners.redis",
            "event_listeners.redis.url": "redis://kinto-cache:6379/1",
            "event_listeners.redis.listname": "from-settings",
        }
    )

    listener = redis_listener.load_from_config(config, "event_listeners.redis.")
    listener(kinto_event(KintoResourceChanged))

    assert [url for url, _, _ in pools] == ["redis://kinto-cache:6379/1"]
    assert listener.listname == "from-environ"
    assert reader.llen("from-environ") == 1


# -- the listener itself -------------------------------------------------------------------------


def article_event(event_class=ResourceChanged, article_id="a1", action="create"):
    """A change as the listener's host calls it with; without a transaction, it is pushed at
    once."""
    payload = {
        "timestamp": 1700000000000,
        "action": action,
        "uri": "/articles",
        "user_id": "basicauth:alice",
        "resource_name": "article",
        "article_id": article_id,
    }
    return event_class(payload, [{"new": {"id": article_id}}])


def test_the_listener_pushes_json_dumps_of_the_payload_with_lpush(reader):
    listener = redis_listener.RedisForwarder(reader, LIST, EVERYTHING)
    first, second = article_event(article_id="a1"), article_event(article_id="a2")

    listener(first)
    listener(second)

    assert reader.lrange(LIST, 0, -1) == [
        json.dumps(second.payload).encode(),
        json.dumps(first.payload).encode(),
    ]
    assert reader.rpop(LIST) == json.dumps(first.payload).encode()


def test_the_listener_ignores_the_hosts_own_after_commit_events(reader):
    listener = redis_listener.RedisForwarder(reader, LIST, EVERYTHING)

    listener(article_event(AfterResourceChanged))
    listener(kinto_event(KintoAfterResourceChanged))

    assert reader.llen(LIST) == 0


def test_the_listener_filters_committed_events_itself(reader):
    only_deletes = EventFilter.parse(Options({"x.actions": "delete"}, "x.", None))
    listener = redis_listener.RedisForwarder(reader, LIST, only_deletes)

    listener(article_event(action="create"))
    listener(article_event(action="delete"))

    assert [p["action"] for p in pushed(reader)] == ["delete"]


@pytest.mark.parametrize("step", ["create_record_1", "delete_record", "batch_3_record_creations"])
def test_a_kinto_change_is_pushed_with_its_impacted_objects_and_no_warning(reader, step):
    listener = redis_listener.RedisForwarder(reader, LIST, EVERYTHING, include_impacted=True)
    event = kinto_event(KintoResourceChanged, step)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Kinto warns when asked for impacted_records
        listener(event)

    assert pushed(reader) == [{**event.payload, "impacted_objects": event.impacted_objects}]


def test_a_redis_error_is_logged_with_the_event_and_never_raised(caplog):
    listener = redis_listener.RedisForwarder(DownRedis(), LIST, EVERYTHING)

    with caplog.at_level(logging.ERROR, logger="notifier"):
        listener(article_event())

    (record,) = caplog.records
    assert record.getMessage() == (
        f"could not push event (create article /articles) to the Redis list {LIST}"
    )
    assert record.exc_info[0] is redis.ConnectionError


def test_a_payload_that_is_not_json_is_logged_and_not_pushed(reader, caplog):
    listener = redis_listener.RedisForwarder(reader, LIST, EVERYTHING)
    event = article_event()
    event.payload["tags"] = {"not", "json"}

    with caplog.at_level(logging.ERROR, logger="notifier"):
        listener(event)

    assert reader.llen(LIST) == 0
    assert caplog.records[0].exc_info[0] is TypeError


# -- setting errors ------------------------------------------------------------------------------

PREFIX = "notifier.event_listeners.redis."


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("pool_size", "0", "a number of connections, 1 or more"),
        ("pool_size", "-3", "a number of connections, 1 or more"),
        ("pool_size", "many", "a number of connections, 1 or more"),
        ("pool_size", "2.5", "a number of connections, 1 or more"),
        pytest.param(
            "pool_size", "\u00b2", "a number of connections, 1 or more", id="pool_size-superscript"
        ),
        ("timeout", "0", "a number of seconds in (0, 60]"),
        ("timeout", "-1", "a number of seconds in (0, 60]"),
        ("timeout", "soon", "a number of seconds in (0, 60]"),
        ("timeout", "61", "a number of seconds in (0, 60]"),
        ("include_impacted", "maybe", "true or false"),
        ("url", "http://cache:6379/0", "a redis:// URL"),
        ("url", "redis://cache:port/0", "a redis:// URL"),
        ("actions", "create destroy", "a list of actions among: create update delete read"),
        ("resources", "blog-post", "resource names are letters, digits and _"),
        ("list_name", "events", f"known settings are {PREFIX}use, {PREFIX}actions"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 20 else None,
)
def test_a_bad_redis_listener_option_fails_at_start_up_naming_the_key_and_what_is_allowed(
    option, value, allowed
):
    settings = {
        "notifier.event_listeners": "redis",
        f"{PREFIX}use": "notifier.listeners.redis",
        f"{PREFIX}{option}": value,
    }

    with pytest.raises(ConfigurationError) as error, Configurator(settings=settings) as config:
        config.include("notifier")

    assert error.value.key == f"{PREFIX}{option}"
    assert str(error.value) == f"{PREFIX}{option} = {value!r} is not valid: {error.value.allowed}"
    assert allowed in error.value.allowed


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NOTIFIER_EVENT_LISTENERS_REDIS_POOL_SIZE", "none"),
        ("NOTIFIER_EVENT_LISTENERS_REDIS_TIMEOUT", "forever"),
        ("NOTIFIER_EVENT_LISTENERS_REDIS_INCLUDE_IMPACTED", "perhaps"),
        ("NOTIFIER_EVENT_LISTENERS_REDIS_URL", "memcached://cache:11211"),
    ],
)
def test_a_bad_redis_listener_option_from_the_environment_names_the_variable(
    monkeypatch, variable, value
):
    monkeypatch.setenv(variable, value)
    settings = {"notifier.event_listeners": "redis", f"{PREFIX}use": "notifier.listeners.redis"}

    with pytest.raises(ConfigurationError) as error, Configurator(settings=settings) as config:
        config.include("notifier")

    assert error.value.key == variable
    assert str(error.value).startswith(f"{variable} = {value!r} is not valid: ")


def test_after_a_redis_error_a_request_pushes_no_more_and_the_next_request_tries_again(caplog):
    client = DownRedis()
    listener = redis_listener.RedisForwarder(client, LIST, EVERYTHING)
    request, next_request = FakeRequest(), FakeRequest()

    with caplog.at_level(logging.ERROR, logger="notifier"):
        for article_id in ("a1", "a2", "a3"):
            event = article_event(article_id=article_id)
            event.request = request
            listener(event)
    assert client.attempts == 1
    assert caplog.records[-1].getMessage().endswith("Redis failed earlier in this request")

    event = article_event()
    event.request = next_request
    listener(event)
    assert client.attempts == 2
