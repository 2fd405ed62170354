"""The bench worker's listeners (NOTIFIER_LISTENERS=bench.listeners): for each resource of
:data:`bench.counting.LISTENERS`, its listeners (1, 2, 3, 5 or 10), the batch listener, and
the three listeners of the slow neighbour's row. Each counts the events it receives
(bench/counting.py) and does nothing else (the slow one sleeps first): what is measured is
what delivering an event costs."""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.counting import (
    BATCH_LISTENER,
    BATCH_RESOURCE,
    BESIDE_SLOW,
    LISTENERS,
    SLOW_LISTENER,
    SLOW_RESOURCE,
    SLOW_SECONDS,
    count,
)
from tasks import Event, listener


def _counting(name: str) -> Callable[[Event], None]:
    def received(event: Event) -> None:
        count(name)

    received.__qualname__ = received.__name__ = name.rsplit(".", 1)[-1]
    return received


for _resource_name, _names in LISTENERS.items():
    for _name in _names:
        listener(_resource_name, name=_name)(_counting(_name))

for _name in BESIDE_SLOW:
    listener(SLOW_RESOURCE, name=_name)(_counting(_name))


@listener(BATCH_RESOURCE, name=BATCH_LISTENER, batch=100)
def bulk(events: list[Event]) -> None:
    """The batch listener: up to 100 events per run, as a bulk index would take them."""
    count(BATCH_LISTENER, len(events))


@listener(SLOW_RESOURCE, name=SLOW_LISTENER)
def slow(event: Event) -> None:
    """The slow neighbour: 50 ms per event (a mail server, a remote index), then it counts."""
    time.sleep(SLOW_SECONDS)
    count(SLOW_LISTENER)
