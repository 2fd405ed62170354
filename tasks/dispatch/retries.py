"""How dispatch tries again for the listeners the broker did not take: the dispatch task's own
retry, and the run's sending again of a message it took (tasks/dispatch/run.py), one policy."""

from __future__ import annotations

__all__ = ["DISPATCH_RETRIES", "dispatch_countdown"]

#: How often dispatch tries again to send a message the broker did not take (backoff: 1 s,
#: 2 s, 4 s... at most 60 s apart, about 15 minutes in all).
DISPATCH_RETRIES = 20


def dispatch_countdown(retries: int) -> int:
    """How long dispatch waits before its attempt after ``retries`` retries, in seconds."""
    return int(min(2**retries, 60))
