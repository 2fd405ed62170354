"""A worker with a bad setting of its own fails when it starts, naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def start_worker_side(code="import tasks", **environ):
    """Import the worker side in a fresh interpreter, as ``celery -A tasks worker`` does, and
    run ``code`` there."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, **environ},
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
    ],
    ids=[
        "routes",
        "search-resources",
        "search-index",
        "search-parent-also-a-resource",
        "search-parent-name",
        "search-parent-star",
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


def test_the_search_index_listener_receives_the_deletes_of_its_parents(tmp_path):
    started = start_worker_side(
        "from tasks.app import registry; print(sorted(registry['notifier.search_index'].parents))",
        NOTIFIER_SEARCH_RESOURCES="record",
        NOTIFIER_SEARCH_PARENTS="bucket, collection",
        NOTIFIER_SEARCH_INDEX=str(tmp_path / "index.sqlite3"),
    )

    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "['bucket', 'collection']"


def test_search_parents_without_search_resources_start(tmp_path):
    started = start_worker_side(NOTIFIER_SEARCH_PARENTS="bucket collection")

    assert started.returncode == 0, started.stderr


def test_a_configuration_module_without_notifiers_settings_is_told_what_is_missing(tmp_path):
    (tmp_path / "myconfig.py").write_text('broker_url = "redis://127.0.0.1:1/0"\n')

    started = start_worker_side(CELERY_CONFIG_MODULE="myconfig", PYTHONPATH=str(tmp_path))

    assert started.returncode != 0
    assert (
        "ConfigurationError: notifier_routes is missing: define it in myconfig, "
        "as notifier's celeryconfig.py does"
    ) in started.stderr
