"""tasks.listeners.registry: ``@listener`` validates when applied and returns the function
unchanged.

Each test has a Celery app and a Registry of its own (the conftest keeps the tasks a test
creates out of the Celery apps of the tests after it).
"""

import pytest
from celery import Celery, signals

from notifier.errors import ListenerError, MalformedMessage
from notifier.wire.message import encode
from tasks.listeners.event import Event
from tasks.listeners.registry import DEFAULT_ACTIONS, Registry
from tests.unit.builders import fan_out_to


@pytest.fixture
def new_queues():
    return []


@pytest.fixture
def registry(app, new_queues):
    return Registry(app, on_new_queue=new_queues.append)


def message(resource_name="article", action="create", record_id="a1"):
    payload = {"resource_name": resource_name, "action": action, "uri": f"/{resource_name}s"}
    return encode(payload, [{"new": {"id": record_id}}], [0], request_id="req-1")


def message_dict(**kwargs):
    return message(**kwargs).as_dict()


def event(**kwargs):
    return Event.from_message(message(**kwargs))


def ignore(event):
    """A listener body for tests about registration only (Celery refuses lambdas)."""
    return event


def test_a_bare_listener_hears_every_resource_on_create_update_and_delete(registry):
    @registry.listener
    def audit(event):
        return event

    (registered,) = registry
    assert registered.name == f"{__name__}.{audit.__qualname__}"
    assert registered.resource_names == {"*"}
    assert registered.actions == set(DEFAULT_ACTIONS) == {"create", "update", "delete"}
    assert registered.wants(message(resource_name="anything", action="delete"))
    assert not registered.wants(message(action="read"))


def test_a_listener_with_arguments_hears_only_what_it_names(registry):
    @registry.listener("article", actions=("create", "update"))
    def index_article(event):
        return event

    (registered,) = registry
    assert registered.resource_names == {"article"}
    assert registered.actions == {"create", "update"}
    assert registered.wants(message(action="update"))
    assert not registered.wants(message(action="delete"))
    assert not registered.wants(message(resource_name="comment"))


def test_a_listener_may_name_several_resources_and_a_single_action(registry):
    @registry.listener(["article", "comment"], actions="delete")
    def forget(event):
        return event

    (registered,) = registry
    assert registered.resource_names == {"article", "comment"}
    assert registered.actions == {"delete"}


def test_read_is_heard_only_when_named(registry):
    @registry.listener("article", actions=("read",))
    def count_reads(event):
        return event

    assert registry[f"{__name__}.{count_reads.__qualname__}"].wants(message(action="read"))


def test_the_decorated_function_is_returned_unchanged_and_still_callable(registry):
    def index_article(event):
        return ("indexed", event.payload["resource_name"])

    decorated = registry.listener("article")(index_article)

    assert decorated is index_article
    assert index_article(event()) == ("indexed", "article")


def test_a_bare_listener_returns_the_function_unchanged(registry):
    def audit(event):
        return event

    assert registry.listener(audit) is audit


def test_the_listener_task_gives_the_function_an_event_rebuilt_from_the_message(registry):
    received = []

    @registry.listener("article", name="test_registry.rebuilt")
    def index_article(event):
        received.append(event)
        return "done"

    data = message_dict()
    assert registry["test_registry.rebuilt"].task.run(data) == "done"

    (event,) = received
    assert isinstance(event, Event)
    assert event.payload == data["payload"]
    assert event.impacted_records == data["impacted_records"]
    assert event.impacted_objects is event.impacted_records
    assert event.event_id == data["event_id"]


def test_the_listener_task_also_accepts_an_event(registry):
    received = []
    registry.listener("article", name="test_registry.accepts_event")(received.append)
    given = event()

    registry["test_registry.accepts_event"].task.run(given)

    assert received == [given]
    assert received[0] is given


def test_the_listener_task_refuses_a_malformed_message(registry):
    registry.listener(name="test_registry.refuses")(ignore)

    with pytest.raises(MalformedMessage, match="unknown schema version"):
        registry["test_registry.refuses"].task.run({"version": 99})


def test_a_listener_name_becomes_its_task_name(registry, app):
    registry.listener("article", name="search.index_article")(ignore)

    assert registry["search.index_article"].task.name == "search.index_article"
    assert "search.index_article" in app.tasks


def test_celery_options_of_a_plain_function_listener_are_set_on_its_task(registry):
    @registry.listener(
        "article", name="test_registry.options", max_retries=7, rate_limit="10/m", time_limit=30
    )
    def send_mail(event):
        return event

    task = registry["test_registry.options"].task
    assert task.max_retries == 7
    assert task.rate_limit == "10/m"
    assert task.time_limit == 30


def test_a_listener_queue_is_reported_through_on_new_queue(registry, new_queues):
    # Celery 5.7 deprecates the queue task attribute (gone in 6.0): with warnings as errors,
    # a listener's own queue must be set some other way, e.g. with task_routes.
    registry.listener("article", name="test_registry.own_queue", queue="slow")(ignore)

    assert new_queues == ["slow"]


def test_dispatch_sends_a_listener_task_to_its_own_queue(registry):
    registry.listener("article", name="test_registry.sent_to_queue", queue="slow")(ignore)
    sent = []

    def record(sender=None, routing_key=None, **kwargs):
        sent.append((sender, routing_key))

    signals.before_task_publish.connect(record)
    try:
        fan_out_to(registry, message_dict())
    finally:
        signals.before_task_publish.disconnect(record)

    assert sent == [("test_registry.sent_to_queue", "slow")]


def test_a_listener_without_a_queue_gets_one_of_its_own(registry, new_queues):
    registry.listener("article", name="test_registry.no_queue")(ignore)

    assert new_queues == ["notifier.listener.test_registry.no_queue"]
    assert registry["test_registry.no_queue"].queue == "notifier.listener.test_registry.no_queue"


@pytest.mark.parametrize("actions", [("destroy",), ("create", "Create"), ()])
def test_an_unknown_action_fails_when_applied_and_says_how_to_fix_it(registry, actions):
    with pytest.raises(ListenerError) as excinfo:
        registry.listener("article", actions=actions)

    message = str(excinfo.value)
    assert "unknown actions" in message
    assert "use some of create, update, delete, read" in message
    assert len(registry) == 0


def test_the_unknown_action_is_named(registry):
    with pytest.raises(ListenerError, match=r"unknown actions \['destroy'\]"):
        registry.listener("article", actions=("create", "destroy"))


@pytest.mark.parametrize("resource_names", ["art-icle", "", [], ["article", 3]])
def test_a_bad_resource_name_fails_when_applied(registry, resource_names):
    with pytest.raises(ListenerError, match="use resource names like 'article', or '\\*'"):
        registry.listener(resource_names)


def test_an_unknown_option_fails_and_lists_the_accepted_ones(registry):
    with pytest.raises(ListenerError) as excinfo:
        registry.listener("article", retries=3)

    message = str(excinfo.value)
    assert "unknown listener options ['retries']" in message
    assert "max_retries" in message
    assert "queue" in message


def test_two_listeners_with_one_name_fail_with_a_message_that_says_how_to_fix_it(registry):
    registry.listener("article", name="test_registry.twice")(ignore)

    with pytest.raises(ListenerError) as excinfo:
        registry.listener("comment", name="test_registry.twice")(ignore)

    message = str(excinfo.value)
    assert "'test_registry.twice'" in message
    assert "another name with @listener(..., name='...')" in message
    assert len(registry) == 1


def test_two_functions_with_one_qualified_name_fail(registry):
    def handle(event):
        return event

    registry.listener("article")(handle)

    # The same module and qualified name as the first one, on purpose.
    def handle(event):
        return event

    with pytest.raises(ListenerError, match="already registered"):
        registry.listener("comment")(handle)


def test_a_listener_named_like_a_registered_listener_task_fails(registry, app):
    registry.listener("article", name="test_registry.taken")(ignore)

    @app.task(shared=False, name="test_registry.other_task")
    def other_task(event):
        return event

    with pytest.raises(ListenerError, match=r"a listener named 'test_registry\.taken' is already"):
        registry.listener(name="test_registry.taken")(other_task)


def test_a_listener_is_registered_with_its_registrys_app_only(registry, app):
    registry.listener("article", name="test_registry.own_app_only")(ignore)
    another_app = Celery("another", broker="memory://", set_as_current=False)

    assert "test_registry.own_app_only" in app.tasks
    assert "test_registry.own_app_only" not in another_app.tasks


# -- stacked on an existing Celery task ----------------------------------------------------------


# The queue task attribute is the user's own choice here; Celery 5.7 warns that it is deprecated.
@pytest.mark.filterwarnings("ignore::celery.exceptions.CDeprecationWarning")
def test_a_listener_stacked_on_a_task_keeps_the_tasks_options(registry, app, new_queues):
    @registry.listener("article", actions=("create",))
    @app.task(
        shared=False, name="test_registry.slow", max_retries=7, rate_limit="10/m", queue="slow"
    )
    def slow(event):
        return event

    (registered,) = registry
    assert registered.name == "test_registry.slow"
    assert registered.task.max_retries == 7
    assert registered.task.rate_limit == "10/m"
    assert registered.task.queue == "slow"
    assert slow.max_retries == 7
    assert new_queues == ["slow"]


def test_a_listener_stacked_on_a_task_returns_the_task(registry, app):
    @app.task(shared=False, name="test_registry.returned")
    def returned(event):
        return event

    assert registry.listener("article")(returned) is returned


def test_a_bare_listener_stacked_on_a_task_returns_the_task(registry, app):
    @app.task(shared=False, name="test_registry.bare_returned")
    def returned(event):
        return event

    assert registry.listener(returned) is returned
    assert registry["test_registry.bare_returned"].resource_names == {"*"}


def test_a_stacked_task_run_receives_an_event_when_given_a_message(registry, app):
    @registry.listener("article")
    @app.task(shared=False, name="test_registry.receives", bind=True, max_retries=2)
    def receives(self, event):
        return (self.name, type(event).__name__, event.payload["resource_name"])

    assert receives.run(message_dict()) == ("test_registry.receives", "Event", "article")
    assert receives(message_dict()) == ("test_registry.receives", "Event", "article")
    assert receives(event()) == ("test_registry.receives", "Event", "article")


def test_options_given_to_a_listener_stacked_on_a_task_are_refused(registry, app):
    @app.task(shared=False, name="test_registry.refused")
    def refused(event):
        return event

    with pytest.raises(ListenerError) as excinfo:
        registry.listener("article", max_retries=3)(refused)

    message = str(excinfo.value)
    assert "test_registry.refused is a Celery task" in message
    assert "set ['max_retries'] on its @app.task(...)" in message
    assert len(registry) == 0


def test_a_stacked_task_may_be_given_a_listener_name(registry, app):
    @registry.listener("article", name="test_registry.renamed_listener")
    @app.task(shared=False, name="test_registry.renamed_task")
    def renamed(event):
        return event

    assert registry["test_registry.renamed_listener"].task.name == "test_registry.renamed_task"


# -- matching ------------------------------------------------------------------------------------


def test_matching_lists_the_listeners_that_want_a_message_in_registration_order(registry):
    registry.listener("comment", name="test_registry.m_comment")(ignore)
    registry.listener(name="test_registry.m_all")(ignore)
    registry.listener("article", name="test_registry.m_article")(ignore)
    registry.listener("article", actions=("delete",), name="test_registry.m_del")(ignore)

    names = [listener.name for listener in registry.matching(message())]

    assert names == ["test_registry.m_all", "test_registry.m_article"]
