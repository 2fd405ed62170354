"""How long each listener's runs take, and which listeners are too slow to run in dispatch.

Dispatch runs the listeners it may run itself one after another, for every message it takes
(tasks/dispatch/inline.py): a listener that takes 50 ms there would hold back every other
listener of every message behind it. So each run of a listener's task, in dispatch or in its own
task, is timed, and :class:`Pace` keeps a moving average of each listener's run time. A listener
whose average is over the budget (``NOTIFIER_INLINE_BUDGET``, 20 ms unless set) gets its own task
for each message, on its own queue, until its average comes back under the budget: its runs in
its own task keep being timed, and once every :data:`RETRY_AFTER` times its run time (a minute
at most), one of its runs is tried in dispatch again (so that a slow listener costs the others
about 1 % of their time, and one that was slow by accident comes back).

The averages are those of one process (each pool process keeps its own, from the runs it saw):
nothing is shared. A process's first run of each listener is not counted, for it may pay for
what the listener does once (connecting to a database, filling a cache): a listener slower
than the budget runs twice in dispatch in each process before it gets its own task. A run
counts as twice the budget at most, so that one stall of the whole machine (every process's
run of a fast listener taking 45 ms at once, seen in bench/) does not send a fast listener out
of dispatch: one that turns slow leaves after three or four slow runs in a row. A run longer
than :data:`HUNG` times the budget (a listener waiting on a service that does not answer)
counts whole, its first in the process included: that listener leaves at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tasks.listeners.runs import ListenerRun

__all__ = ["HUNG", "INLINE_BUDGET", "RETRY_AFTER", "RETRY_AFTER_MAX", "Pace"]

#: The default budget, in seconds: the longest average run a listener may have and still run
#: in dispatch. About ten times what a task of its own would add to each of its runs (1.3 to
#: 2 ms here: bench/), so that a listener sent one loses at most a tenth of its throughput;
#: a listener that writes to a database or calls a service nearby (the search index takes 2 to
#: 4.5 ms an event, 10 ms and more on a saturated machine) stays in dispatch.
INLINE_BUDGET = 0.02
#: After how many times its run time a listener too slow for dispatch is tried there again,
#: and the longest wait, in seconds.
RETRY_AFTER = 100
RETRY_AFTER_MAX = 60.0
#: How many times the budget a run takes for it to count whole.
HUNG = 10
#: The weight of the newest run in a listener's moving average: about the last ten runs count.
_WEIGHT = 0.2


class Pace:
    """The moving average of each listener's run time, in this process (see the module's doc);
    a run wrapper (:mod:`tasks.listeners.runs`) that times each run. ``budget``: the longest
    average of a listener that may run in dispatch (0: none may); ``clock`` times the runs."""

    def __init__(
        self, budget: float = INLINE_BUDGET, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.budget = budget
        self.clock = clock
        self._averages: dict[str, float] = {}
        self._warmed: set[str] = set()  # listeners whose first run in this process ended
        self._retry_at: dict[str, float] = {}  # when a listener too slow is tried again
        self._last: dict[str, float] = {}  # the last counted run of each listener, in seconds

    def __call__(self, run: ListenerRun, proceed: Callable[[ListenerRun], Any]) -> Any:
        started = self.clock()
        try:
            return proceed(run)
        finally:
            self.record(run.listener.name, self.clock() - started)

    def record(self, name: str, seconds: float) -> None:
        """Count one run of listener ``name`` that took ``seconds`` (see the module's doc: its
        first in this process, and what it takes over twice the budget, are not counted unless
        it hung)."""
        hung = seconds > HUNG * self.budget
        if name not in self._warmed:
            self._warmed.add(name)
            if not hung:
                return
        self._last[name] = seconds
        counted = seconds if hung else min(seconds, 2 * self.budget)
        average = self._averages.get(name)
        self._averages[name] = (
            counted if average is None else average + _WEIGHT * (counted - average)
        )

    def average(self, name: str) -> float | None:
        """The moving average of listener ``name``'s runs, in seconds (as they are counted);
        None before any is counted."""
        return self._averages.get(name)

    def fits(self, name: str) -> bool:
        """Whether listener ``name`` may run in dispatch now: its runs fit the budget on
        average (a listener not timed yet in this process is given the benefit of the doubt),
        or it is time to try a slow one again."""
        if self.budget <= 0:
            return False
        average = self._averages.get(name)
        if average is None or average <= self.budget:
            self._retry_at.pop(name, None)
            return True
        now = self.clock()
        retry_at = self._retry_at.get(name)
        if retry_at is not None and now < retry_at:
            return False
        # Found too slow just now, or the time to try it again has come: either way, the next
        # try is a hundred times its run time away, a minute at most.
        wait = min(max(average, self._last.get(name, 0.0)) * RETRY_AFTER, RETRY_AFTER_MAX)
        self._retry_at[name] = now + wait
        return retry_at is not None

    def slow(self, name: str) -> bool:
        """Whether listener ``name``'s runs are over the budget on average (asking changes
        nothing, unlike :meth:`fits`)."""
        average = self._averages.get(name)
        return self.budget <= 0 or (average is not None and average > self.budget)
