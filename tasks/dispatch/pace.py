"""How long each listener's runs take, and which listeners are too slow to run in dispatch.

Dispatch runs the listeners it may run itself one after another, for every message it takes
(tasks/dispatch/inline.py): a listener that takes 50 ms there would hold back every other
listener of every message behind it. So each run of a listener's task, in dispatch or in its own
task, is timed, and :class:`Pace` keeps a moving average of each listener's run time. A listener
whose average is over the budget (``NOTIFIER_INLINE_BUDGET``, 5 ms unless set) gets its own task
for each message, on its own queue, until its average comes back under the budget: its runs in
its own task keep being timed.

The averages are those of one process (each pool process keeps its own, from the runs it saw):
nothing is shared, and a new process starts with none, so that a listener's first run in it is
in dispatch, when it may run there at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tasks.listeners.runs import ListenerRun

__all__ = ["INLINE_BUDGET", "Pace"]

#: The default budget, in seconds: the longest average run a listener may have and still run
#: in dispatch.
INLINE_BUDGET = 0.005
#: The weight of the newest run in a listener's moving average: about the last ten runs count.
_WEIGHT = 0.2


class Pace:
    """The moving average of each listener's run time, in this process (see the module's doc);
    a run wrapper (:mod:`tasks.listeners.runs`) that times each run. ``budget``: the longest
    average of a listener that may run in dispatch (0: none may)."""

    def __init__(
        self, budget: float = INLINE_BUDGET, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.budget = budget
        self.clock = clock
        self._averages: dict[str, float] = {}

    def __call__(self, run: ListenerRun, proceed: Callable[[ListenerRun], Any]) -> Any:
        started = self.clock()
        try:
            return proceed(run)
        finally:
            self.record(run.listener.name, self.clock() - started)

    def record(self, name: str, seconds: float) -> None:
        """Count one run of listener ``name`` that took ``seconds``."""
        average = self._averages.get(name)
        self._averages[name] = (
            seconds if average is None else average + _WEIGHT * (seconds - average)
        )

    def average(self, name: str) -> float | None:
        """The moving average of listener ``name``'s runs, in seconds; None before its first."""
        return self._averages.get(name)

    def fits(self, name: str) -> bool:
        """Whether listener ``name`` may run in dispatch: its runs fit the budget on average (a
        listener not run yet in this process is given the benefit of the doubt)."""
        if self.budget <= 0:
            return False
        average = self._averages.get(name)
        return average is None or average <= self.budget
