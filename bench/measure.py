"""What the sections of the bench share: the record they write, the clock, the table's units."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: A row of the table: measurement, median, p99, ratio.
Row = tuple[str, str, str, str]

RECORD = {  # a Kinto record of about 1 KB, as kinto-redis and notifier would carry it
    "id": "9d6c3b8e-5b1c-4c8e-9a39-6f0d3b2a1c4e",
    "last_modified": 1795509277828,
    "title": "Redis as a broker",
    "body": "Lists, queues and workers. " * 33,
}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def timed(call: Callable[[], Any], count: int) -> list[float]:
    """The duration of each of ``count`` calls."""
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return durations
