"""notifier.wire.routing.RoutingTable: which queue a message goes to."""

import pytest

from notifier.errors import ConfigurationError
from notifier.wire.routing import DEFAULT_QUEUE, Route, RoutingTable


def test_an_empty_table_sends_everything_to_the_notifier_queue():
    table = RoutingTable.parse("")

    assert DEFAULT_QUEUE == "notifier"
    assert table.queue_for("article", "create") == "notifier"
    assert table.queue_for("record", "delete") == "notifier"
    assert table.queues == ["notifier"]


def test_a_resource_route_takes_every_action_of_that_resource():
    table = RoutingTable.parse("article.*=articles")

    for action in ("create", "update", "delete", "read"):
        assert table.queue_for("article", action) == "articles"
    assert table.queue_for("comment", "create") == "notifier"


def test_an_action_route_takes_that_action_of_every_resource():
    table = RoutingTable.parse("*.delete=deletions")

    assert table.queue_for("article", "delete") == "deletions"
    assert table.queue_for("record", "delete") == "deletions"
    assert table.queue_for("record", "update") == "notifier"


def test_the_first_matching_route_wins():
    table = RoutingTable.parse("article.*=articles *.delete=deletions")

    assert table.queue_for("article", "delete") == "articles"
    assert table.queue_for("comment", "delete") == "deletions"


def test_the_first_matching_route_wins_in_the_other_order_too():
    table = RoutingTable.parse("*.delete=deletions article.*=articles")

    assert table.queue_for("article", "delete") == "deletions"
    assert table.queue_for("article", "create") == "articles"


def test_an_exact_route_matches_only_its_resource_and_action():
    table = RoutingTable.parse("article.create=new-articles")

    assert table.queue_for("article", "create") == "new-articles"
    assert table.queue_for("article", "update") == "notifier"
    assert table.queue_for("comment", "create") == "notifier"


def test_a_catch_all_route_replaces_the_default_queue():
    table = RoutingTable.parse("article.*=articles *.*=everything")

    assert table.queue_for("comment", "update") == "everything"
    assert table.queues == ["articles", "everything"]


def test_spaces_around_the_equals_sign_are_allowed():
    table = RoutingTable.parse("article.* = articles   *.delete =deletions")

    assert table.routes == (
        Route("article", "*", "articles"),
        Route("*", "delete", "deletions"),
    )


def test_entries_may_be_separated_by_commas_and_new_lines():
    table = RoutingTable.parse("\n  article.*=articles,\n  *.delete=deletions ,comment.create=c\n")

    assert [route.queue for route in table.routes] == ["articles", "deletions", "c"]


def test_queues_lists_every_queue_once_with_the_default_one():
    table = RoutingTable.parse("article.*=articles comment.*=articles *.delete=deletions")

    assert table.queues == ["articles", "deletions", "notifier"]


def test_queue_names_may_hold_dots_colons_and_dashes():
    table = RoutingTable.parse("article.*=notifier.articles:high-priority_1")

    assert table.queue_for("article", "update") == "notifier.articles:high-priority_1"


@pytest.mark.parametrize(
    ("entry", "allowed"),
    [
        ("article=articles", "<resource_name>.<action>=<queue>"),
        ("article.*", "<resource_name>.<action>=<queue>"),
        ("article.*=", "<resource_name>.<action>=<queue>"),
        ("=articles", "<resource_name>.<action>=<queue>"),
        ("art-icle.*=articles", "a resource name is letters, digits, _ or *"),
        (".create=creations", "a resource name is letters, digits, _ or *"),
        ("article.destroy=articles", "the action is one of"),
        ("article.create.x=articles", "write a route as <resource_name>.<action>=<queue>"),
        ("article.*=art/icles", "a queue name is letters, digits and _.:-"),
        ("article.*==articles", "a queue name is letters, digits and _.:-"),
    ],
)
def test_a_bad_entry_is_named_with_what_is_allowed(entry, allowed):
    with pytest.raises(ConfigurationError) as excinfo:
        RoutingTable.parse(f"comment.*=comments, {entry}")

    message = str(excinfo.value)
    assert excinfo.value.key == "notifier.routes"
    assert excinfo.value.value == entry
    assert message.startswith(f"notifier.routes = {entry!r} is not valid")
    assert allowed in message


def test_an_unknown_action_error_lists_the_actions():
    with pytest.raises(ConfigurationError) as excinfo:
        RoutingTable.parse("article.destroy=articles")

    for action in ("*", "create", "update", "delete", "read"):
        assert action in excinfo.value.allowed


def test_errors_name_the_key_the_table_was_read_from():
    with pytest.raises(ConfigurationError) as excinfo:
        RoutingTable.parse("article=articles", key="NOTIFIER_ROUTES")

    assert excinfo.value.key == "NOTIFIER_ROUTES"
    assert str(excinfo.value).startswith("NOTIFIER_ROUTES = ")
