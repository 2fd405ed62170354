"""notifier.settings.parse_settings: defaults, the broker URL's sources, and loud errors."""

import pytest

from notifier.errors import ConfigurationError
from notifier.settings import parse_settings
from notifier.wire.payload import ACTIONS
from notifier.wire.routing import DEFAULT_QUEUE

NO_ENVIRON: dict[str, str] = {}


def test_defaults_publish_create_update_delete_of_every_resource_to_one_queue():
    settings = parse_settings({}, environ=NO_ENVIRON)

    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.actions == {ACTIONS.CREATE, ACTIONS.UPDATE, ACTIONS.DELETE}
    assert settings.resources == frozenset()
    assert settings.publish_timeout == 0.5
    assert settings.routing.queue_for("article", "create") == DEFAULT_QUEUE
    assert settings.routing.queues == [DEFAULT_QUEUE]


def test_settings_are_frozen():
    settings = parse_settings({}, environ=NO_ENVIRON)

    with pytest.raises(AttributeError):
        settings.publish_timeout = 10  # type: ignore[misc]


def test_settings_outside_the_notifier_namespace_are_ignored():
    settings = parse_settings(
        {"pyramid.includes": "pyramid_tm", "tm.manager_hook": "x", "notifierx": "1"},
        environ=NO_ENVIRON,
    )

    assert settings.broker_url == "redis://localhost:6379/0"


def test_broker_url_setting_wins_over_the_environment():
    settings = parse_settings(
        {"notifier.broker_url": "redis://broker:6379/3"},
        environ={"CELERY_BROKER_URL": "redis://from-environ:6379/1"},
    )

    assert settings.broker_url == "redis://broker:6379/3"


def test_broker_url_comes_from_celery_broker_url_when_not_set():
    settings = parse_settings({}, environ={"CELERY_BROKER_URL": "redis://from-environ:6379/1"})

    assert settings.broker_url == "redis://from-environ:6379/1"


def test_an_empty_broker_url_setting_falls_back_to_the_environment():
    settings = parse_settings(
        {"notifier.broker_url": ""}, environ={"CELERY_BROKER_URL": "rediss://secure:6380/0"}
    )

    assert settings.broker_url == "rediss://secure:6380/0"


def test_parse_settings_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://process-environ:6379/2")

    assert parse_settings({}).broker_url == "redis://process-environ:6379/2"


@pytest.mark.parametrize(
    "url", ["redis://h:6379/0", "rediss://h:6380/0", "redis+socket:///tmp/redis.sock", "memory://"]
)
def test_redis_and_memory_brokers_are_accepted(url):
    assert parse_settings({"notifier.broker_url": url}, environ=NO_ENVIRON).broker_url == url


@pytest.mark.parametrize("url", ["amqp://guest@localhost//", "localhost:6379", "sqs://"])
def test_a_broker_url_with_another_scheme_names_the_key_and_the_allowed_schemes(url):
    with pytest.raises(ConfigurationError) as excinfo:
        parse_settings({"notifier.broker_url": url}, environ=NO_ENVIRON)

    message = str(excinfo.value)
    assert excinfo.value.key == "notifier.broker_url"
    assert "notifier.broker_url" in message
    assert url in message
    assert "redis" in message
    assert "memory" in message


def test_a_bad_broker_url_from_the_environment_names_the_environment_variable():
    with pytest.raises(ConfigurationError, match=r"^CELERY_BROKER_URL = 'amqp://localhost//'"):
        parse_settings({}, environ={"CELERY_BROKER_URL": "amqp://localhost//"})


def test_a_bad_routing_table_from_the_environment_names_the_environment_variable():
    with pytest.raises(ConfigurationError, match=r"^NOTIFIER_ROUTES = 'article'"):
        parse_settings({}, environ={"NOTIFIER_ROUTES": "article"})


def test_actions_are_read_as_a_list():
    settings = parse_settings({"notifier.actions": "create\n  delete"}, environ=NO_ENVIRON)

    assert settings.actions == {ACTIONS.CREATE, ACTIONS.DELETE}


def test_read_is_published_only_when_asked():
    default = parse_settings({}, environ=NO_ENVIRON)
    opted_in = parse_settings({"notifier.actions": "read create"}, environ=NO_ENVIRON)

    assert not default.wants("article", "read")
    assert opted_in.wants("article", "read")
    assert opted_in.wants("article", "create")
    assert not opted_in.wants("article", "delete")


def test_an_unknown_action_names_the_key_and_the_allowed_actions():
    with pytest.raises(ConfigurationError) as excinfo:
        parse_settings({"notifier.actions": "create destroy"}, environ=NO_ENVIRON)

    message = str(excinfo.value)
    assert excinfo.value.key == "notifier.actions"
    assert "notifier.actions" in message
    assert "destroy" in message
    for action in ("create", "update", "delete", "read"):
        assert action in message


@pytest.mark.parametrize("value", ["", "   ", "\n"])
def test_empty_actions_are_refused(value):
    with pytest.raises(ConfigurationError) as excinfo:
        parse_settings({"notifier.actions": value}, environ=NO_ENVIRON)

    assert excinfo.value.key == "notifier.actions"
    assert "at least one action" in str(excinfo.value)


def test_publish_timeout_is_a_number_of_seconds():
    settings = parse_settings({"notifier.publish_timeout": "2.5"}, environ=NO_ENVIRON)

    assert settings.publish_timeout == 2.5


@pytest.mark.parametrize("value", ["soon", "0", "-1", "61", "nan", "inf", ""])
def test_a_bad_publish_timeout_names_the_key_and_the_allowed_range(value):
    with pytest.raises(ConfigurationError) as excinfo:
        parse_settings({"notifier.publish_timeout": value}, environ=NO_ENVIRON)

    message = str(excinfo.value)
    assert excinfo.value.key == "notifier.publish_timeout"
    assert "notifier.publish_timeout" in message
    assert "seconds" in message
    assert "60" in message


def test_an_unknown_notifier_setting_is_reported_with_the_known_ones():
    with pytest.raises(ConfigurationError) as excinfo:
        parse_settings({"notifier.broker": "redis://h:6379/0"}, environ=NO_ENVIRON)

    message = str(excinfo.value)
    assert excinfo.value.key == "notifier.broker"
    assert message.startswith("notifier.broker = ")
    for known in ("broker_url", "routes", "actions", "resources", "publish_timeout"):
        assert f"notifier.{known}" in message


def test_routes_are_read_from_the_setting():
    settings = parse_settings(
        {"notifier.routes": "article.*=articles *.delete=deletions"}, environ=NO_ENVIRON
    )

    assert settings.routing.queue_for("article", "delete") == "articles"
    assert settings.routing.queue_for("comment", "delete") == "deletions"
    assert settings.routing.queue_for("comment", "create") == DEFAULT_QUEUE


def test_routes_come_from_notifier_routes_in_the_environment_when_not_set():
    settings = parse_settings({}, environ={"NOTIFIER_ROUTES": "*.*=everything"})

    assert settings.routing.queue_for("article", "create") == "everything"


def test_a_bad_route_entry_names_the_key_and_the_expected_shape():
    with pytest.raises(ConfigurationError) as excinfo:
        parse_settings({"notifier.routes": "article=articles"}, environ=NO_ENVIRON)

    message = str(excinfo.value)
    assert excinfo.value.key == "notifier.routes"
    assert "notifier.routes" in message
    assert "article=articles" in message
    assert "<resource_name>.<action>=<queue>" in message


def test_resources_filter_keeps_only_the_named_resources():
    settings = parse_settings({"notifier.resources": "record collection"}, environ=NO_ENVIRON)

    assert settings.resources == {"record", "collection"}
    assert settings.wants("record", "create")
    assert settings.wants("collection", "delete")
    assert not settings.wants("bucket", "create")


def test_resources_may_be_separated_by_commas_like_routes():
    # Routes and NOTIFIER_SEARCH_RESOURCES accept commas; read as "record," the filter would
    # match no resource, and every record event would be dropped without a word.
    settings = parse_settings({"notifier.resources": "record, collection"}, environ=NO_ENVIRON)

    assert settings.wants("record", "create")
    assert settings.wants("collection", "create")


def test_no_resources_filter_means_every_resource():
    settings = parse_settings({"notifier.resources": ""}, environ=NO_ENVIRON)

    assert settings.wants("anything", "update")


def test_actions_given_in_code_as_a_list_are_accepted():
    # Pyramid apps configured in code pass lists, and Pyramid's aslist accepts them.
    settings = parse_settings({"notifier.actions": ["create", "delete"]}, environ=NO_ENVIRON)

    assert settings.actions == {ACTIONS.CREATE, ACTIONS.DELETE}


def test_resources_given_in_code_as_a_list_still_publish_those_resources():
    settings = parse_settings({"notifier.resources": ["article"]}, environ=NO_ENVIRON)

    assert settings.resources == {"article"}
    assert settings.wants("article", "create")


def test_numbers_given_in_code_are_accepted():
    settings = parse_settings({"notifier.publish_timeout": 2}, environ=NO_ENVIRON)

    assert settings.publish_timeout == 2.0
