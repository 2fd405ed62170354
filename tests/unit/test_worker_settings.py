"""A worker with a bad setting of its own fails when it starts, naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


#: What ``celery -A tasks worker`` does first: import the app, then have its loader import the
#: listener modules (which checks the settings: tasks.settings.configure).
START = "import tasks; tasks.app.loader.init_worker()"


def start_worker_side(code=START, **environ):
    """Start the worker side in a fresh interpreter as ``celery -A tasks worker`` does, and run
    ``code`` there."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        # None: a variable left out.
        env={k: v for k, v in {**os.environ, **environ}.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        (
            {"NOTIFIER_ROUTES": "article=articles"},
            "NOTIFIER_ROUTES = 'article=articles' is not valid",
        ),
        (
            {"NOTIFIER_SEARCH_RESOURCES": "article-x"},
            "NOTIFIER_SEARCH_RESOURCES = 'article-x' is not valid",
        ),
        (
            {"NOTIFIER_SEARCH_RESOURCES": "article", "NOTIFIER_SEARCH_INDEX": "/nowhere/i.db"},
            "NOTIFIER_SEARCH_INDEX = '/nowhere/i.db' is not valid: a file in a directory that",
        ),
        (
            {"NOTIFIER_SEARCH_RESOURCES": "record", "NOTIFIER_SEARCH_PARENTS": "collection record"},
            "NOTIFIER_SEARCH_PARENTS = 'collection record' is not valid: resource names",
        ),
        (
            {"NOTIFIER_SEARCH_RESOURCES": "record", "NOTIFIER_SEARCH_PARENTS": "bucket-x"},
            "NOTIFIER_SEARCH_PARENTS = 'bucket-x' is not valid",
        ),
        (
            {"NOTIFIER_SEARCH_RESOURCES": "record", "NOTIFIER_SEARCH_PARENTS": "*"},
            "NOTIFIER_SEARCH_PARENTS = '*' is not valid",
        ),
        *[
            (
                {"NOTIFIER_VISIBILITY_TIMEOUT": value},
                f"NOTIFIER_VISIBILITY_TIMEOUT = {value!r} is not valid: a whole number of "
                "seconds from 1 to 86400 (a day); default 30",
            )
            for value in ("abc", "0", "-5", "1.5", "86401", "")
        ],
        *[
            (
                {"NOTIFIER_INLINE_BUDGET": value},
                f"NOTIFIER_INLINE_BUDGET = {value!r} is not valid: a number of seconds from 0 "
                "(no listener runs in dispatch) to 60; default 0.02",
            )
            for value in ("5ms", "-0.001", "61", "nan", "")
        ],
        *[
            (
                {"NOTIFIER_DISPATCH_LINGER": value},
                f"NOTIFIER_DISPATCH_LINGER = {value!r} is not valid: a number of seconds from 0 "
                "(a run ends at an empty queue) to 1; default 0.02",
            )
            for value in ("20ms", "-1", "1.5")
        ],
        (
            {"CELERY_BROKER_URL": "localhost:6379"},
            "CELERY_BROKER_URL = 'localhost:6379' is not valid: a URL whose scheme is one of "
            "redis, rediss, redis+socket, sentinel, memory (several URLs, for failover, "
            "separated by ;), e.g. redis://localhost:6379/0",
        ),
        (
            {"CELERY_BROKER_URL": "amqp://guest@rabbit//"},
            "CELERY_BROKER_URL = 'amqp://guest@rabbit//' is not valid: a URL whose scheme is",
        ),
        (
            {"CELERY_BROKER_URL": "redis://127.0.0.1:1/0;redis://redis:port/0"},
            "CELERY_BROKER_URL = 'redis://127.0.0.1:1/0;redis://redis:port/0' is not valid",
        ),
        (
            {"NOTIFIER_DEAD_LETTERS_URL": "redis-host:6379"},
            "NOTIFIER_DEAD_LETTERS_URL = 'redis-host:6379' is not valid: a Redis URL: "
            "redis://host:port/db, rediss://... (TLS) or unix:///path/to/socket",
        ),
        (
            {"NOTIFIER_ORDER_URL": "http://redis:6379"},
            "NOTIFIER_ORDER_URL = 'http://redis:6379' is not valid: a Redis URL: "
            "redis://host:port/db, rediss://... (TLS) or unix:///path/to/socket; one Redis "
            "server of version 5 or newer, not a Cluster",
        ),
        (
            {"NOTIFIER_LISTENERS": "mylisteners, my-listeners.py"},
            "NOTIFIER_LISTENERS = 'mylisteners, my-listeners.py' is not valid: Python module "
            "names, separated by spaces or commas, e.g. mylisteners or myapp.listeners (not "
            "'my-listeners.py': a module's dotted name, not a file name or path)",
        ),
        (
            {"NOTIFIER_LISTENERS": "examples/listeners"},
            "NOTIFIER_LISTENERS = 'examples/listeners' is not valid",
        ),
        (
            {"NOTIFIER_DISPATCH_ONLY": "maybe"},
            "NOTIFIER_DISPATCH_ONLY = 'maybe' is not valid: true or false",
        ),
        (
            {"CELERY_CONFIG_MODULE": "no_such_config"},
            "CELERY_CONFIG_MODULE = 'no_such_config' is not valid: a module this worker can "
            "import (from its working directory or PYTHONPATH), like notifier's celeryconfig",
        ),
    ],
    ids=[
        "routes",
        "search-resources",
        "search-index",
        "search-parent-also-a-resource",
        "search-parent-name",
        "search-parent-star",
        "visibility-timeout-not-a-number",
        "visibility-timeout-zero",
        "visibility-timeout-negative",
        "visibility-timeout-fraction",
        "visibility-timeout-over-a-day",
        "visibility-timeout-empty",
        "inline-budget-with-a-unit",
        "inline-budget-negative",
        "inline-budget-over-a-minute",
        "inline-budget-nan",
        "inline-budget-empty",
        "dispatch-linger-with-a-unit",
        "dispatch-linger-negative",
        "dispatch-linger-over-a-second",
        "broker-url-no-scheme",
        "broker-url-another-transport",
        "broker-url-failover-bad-port",
        "dead-letters-url",
        "order-url",
        "listeners-file-name",
        "listeners-path",
        "dispatch-only",
        "config-module",
    ],
)
def test_a_bad_worker_setting_stops_the_worker_side_at_start_up(environ, error):
    started = start_worker_side(**environ)

    assert started.returncode != 0
    assert f"notifier.errors.ConfigurationError: {error}" in started.stderr


def test_good_worker_settings_start(tmp_path):
    started = start_worker_side(
        NOTIFIER_ROUTES="article.*=articles",
        NOTIFIER_SEARCH_RESOURCES="article, comment",
        NOTIFIER_SEARCH_INDEX=str(tmp_path / "index.sqlite3"),
    )

    assert started.returncode == 0, started.stderr


def test_the_visibility_timeout_sets_the_transports_and_its_sweep():
    started = start_worker_side(
        f"{START}; from tasks.app import app; c = app.conf; o = c.broker_transport_options; "
        "print(c.notifier_visibility_timeout, o['visibility_timeout'], "
        "o['unacked_restore_interval'])",
        NOTIFIER_VISIBILITY_TIMEOUT=" 45 ",
    )

    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["45", "45", "4"]


@pytest.mark.parametrize(
    ("setting", "value", "conf", "built"),
    [
        # The pace dispatch keeps its listeners to.
        ("NOTIFIER_INLINE_BUDGET", "0.02", "notifier_inline_budget", "pace.budget"),
        # How long the worker's dispatch runs wait for more messages.
        ("NOTIFIER_DISPATCH_LINGER", "0.05", "notifier_dispatch_linger", "linger"),
    ],
    ids=["inline-budget", "dispatch-linger"],
)
def test_a_setting_in_seconds_is_what_the_worker_s_wiring_uses(setting, value, conf, built):
    started = start_worker_side(
        f"{START}; from tasks.app import app; from tasks.wiring import wire; "
        "from tasks.listeners.registry import Registry; "
        f"print(app.conf.{conf}, wire(app, Registry(app)).{built})",
        **{setting: value},
    )

    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == [value, value]


def test_a_worker_takes_dispatch_messages_before_its_listeners_own_tasks(tmp_path):
    started = start_worker_side(
        f"{START}; from types import SimpleNamespace; from celery import signals; "
        "from tasks.app import app; "
        # What the worker's start does once it loaded every listener module.
        "signals.celeryd_after_setup.send(sender='w', instance=SimpleNamespace(app=app), "
        "conf=app.conf); "
        "print(app.conf.broker_transport_options['queue_order_strategy'], *app.amqp.queues)",
        NOTIFIER_ROUTES="article.*=articles",
        NOTIFIER_SEARCH_RESOURCES="article",
        NOTIFIER_SEARCH_INDEX=str(tmp_path / "index.sqlite3"),
    )

    assert started.returncode == 0, started.stderr
    # The queues in the order the worker consumes them, and the cycle that orders its takes.
    assert started.stdout.split() == [
        "tasks.broker.queue_order:DispatchFirst",
        "articles",
        "notifier",
        "notifier.listener.notifier.search_index",
    ]


def test_a_configuration_module_that_imports_a_missing_module_says_which(tmp_path):
    (tmp_path / "myconfig.py").write_text("import no_such_dependency\n")

    started = start_worker_side(CELERY_CONFIG_MODULE="myconfig", PYTHONPATH=str(tmp_path))

    assert started.returncode != 0
    assert "No module named 'no_such_dependency'" in started.stderr
    assert "ConfigurationError" not in started.stderr


def test_the_search_index_listener_receives_the_deletes_of_its_parents(tmp_path):
    started = start_worker_side(
        f"{START}; from tasks.app import registry; "
        "print(sorted(registry['notifier.search_index'].parents))",
        NOTIFIER_SEARCH_RESOURCES="record",
        NOTIFIER_SEARCH_PARENTS="bucket, collection",
        NOTIFIER_SEARCH_INDEX=str(tmp_path / "index.sqlite3"),
    )

    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "['bucket', 'collection']"


def test_search_parents_without_search_resources_start(tmp_path):
    started = start_worker_side(NOTIFIER_SEARCH_PARENTS="bucket collection")

    assert started.returncode == 0, started.stderr


def test_a_configuration_module_of_ones_own_sets_only_what_it_changes(tmp_path):
    (tmp_path / "myconfig.py").write_text(
        'broker_url = "redis://127.0.0.1:1/0"\nnotifier_visibility_timeout = 60\n'
    )

    started = start_worker_side(
        f"{START}; c = tasks.app.conf; "
        "print(c.notifier_visibility_timeout, c.notifier_dead_letters_url, c.task_acks_late)",
        CELERY_CONFIG_MODULE="myconfig",
        PYTHONPATH=str(tmp_path),
        CELERY_BROKER_URL=None,
    )

    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["60", "redis://127.0.0.1:1/0", "True"]


def test_importing_the_worker_side_checks_no_setting():
    imported = start_worker_side(
        "import tasks; from tasks import Event, listener, app; print('imported')",
        NOTIFIER_SEARCH_RESOURCES="article",
        NOTIFIER_SEARCH_INDEX="/nonexistent/index.sqlite3",
        NOTIFIER_ROUTES="not a route",
    )

    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "imported"


def test_a_celery_worker_with_a_bad_setting_stops_before_it_connects():
    started = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=solo"],
        cwd=REPO,
        env={
            **os.environ,
            "NOTIFIER_ROUTES": "article=articles",
            "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert started.returncode != 0
    assert (
        "notifier.errors.ConfigurationError: NOTIFIER_ROUTES = 'article=articles' is not valid"
        in started.stderr
    )
