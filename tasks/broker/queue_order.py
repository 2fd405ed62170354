"""The order in which a worker takes its queues: the dispatch messages first, then the
listeners' own tasks.

kombu's Redis transport asks its ``queue_order_strategy`` (a cycle class it makes with no
arguments) which queues to try next, in order, and tells it which one it last took from. Its
own ``round_robin`` takes each queue in turn, so that a slow listener's tasks (or a batch's)
have a pool process after every dispatch task; its ``priority`` is strict among all queues, so
that one busy queue of the routing table keeps the others waiting. :class:`DispatchFirst`
takes the queues of the routing table (and any other) in turn, and the listeners' own queues
(``notifier.listener.<name>``, :data:`tasks.listeners.registry.LISTENER_QUEUE`), in turn too,
only when none of the former has a message: the listeners that run in dispatch keep up with the
events, while the tasks of listeners of their own wait for the pool to be free.

Relied on, checked on kombu 5.7.0: the transport's channel makes the cycle with
``cycle_by_name(queue_order_strategy)()`` (a dotted name is imported), calls ``update(queues)``
with the queues it consumes, ``consume(n)`` for the order of the next take, and
``rotate(queue)`` after taking from ``queue`` (``kombu.utils.scheduling``); the workers' channel
(tasks/broker/consuming.py) asks it the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from tasks.listeners.registry import LISTENER_QUEUE

__all__ = ["LISTENER_QUEUES", "DispatchFirst"]

#: The prefix of the listeners' own queues.
LISTENER_QUEUES = LISTENER_QUEUE.format(name="")


class DispatchFirst:
    """A kombu queue cycle: the other queues in turn, then the listeners' own queues in turn."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def update(self, items: Iterable[str]) -> None:
        self.items[:] = items

    def consume(self, n: int) -> list[str]:
        first = [name for name in self.items if not name.startswith(LISTENER_QUEUES)]
        last = [name for name in self.items if name.startswith(LISTENER_QUEUES)]
        return (first + last)[:n]

    def rotate(self, last_used: str) -> None:
        # The queue just taken from goes last: its group takes its other queues first next time.
        with contextlib.suppress(ValueError):  # a queue no longer consumed
            self.items.append(self.items.pop(self.items.index(last_used)))
