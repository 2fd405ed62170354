"""Listeners converge: after random writes delivered out of order, with redeliveries and a
worker killed mid-run, the search index and an ordered listener's copy equal the database."""

from __future__ import annotations

import pytest

from tests.integration.conftest import require_redis_server
from tests.integration.convergence import run


@pytest.fixture(autouse=True)
def _redis_server_binary() -> None:
    require_redis_server()


def test_the_index_and_an_ordered_listener_end_equal_to_the_database(tmp_path):
    report = run(tmp_path, seed=20261124, operations=600, workers=2, kills=1, settle=90)

    print("\n".join(report.lines()))
    assert report.workers_killed == 1
    assert report.redeliveries > 0
    assert report.articles > 0
    assert report.dead_letters == 0
    assert report.diverged == {}
