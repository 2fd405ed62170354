"""The bench worker's listeners (NOTIFIER_LISTENERS=bench.listeners): for each resource of
:data:`bench.counting.LISTENERS`, its listeners (1, 2, 3, 5 or 10), and the batch listener.
Each counts the events it receives (bench/counting.py) and does nothing else: what is
measured is what delivering an event costs."""

from __future__ import annotations

from collections.abc import Callable

from bench.counting import BATCH_LISTENER, BATCH_RESOURCE, LISTENERS, count
from tasks import Event, listener


def _counting(name: str) -> Callable[[Event], None]:
    def received(event: Event) -> None:
        count(name)

    received.__qualname__ = received.__name__ = name.rsplit(".", 1)[-1]
    return received


for _resource_name, _names in LISTENERS.items():
    for _name in _names:
        listener(_resource_name, name=_name)(_counting(_name))


@listener(BATCH_RESOURCE, name=BATCH_LISTENER, batch=100)
def bulk(events: list[Event]) -> None:
    """The batch listener: up to 100 events per run, as a bulk index would take them."""
    count(BATCH_LISTENER, len(events))
