"""Listeners of the metrics endpoint's test (NOTIFIER_LISTENERS of test_metrics_endpoint.py):
one that always succeeds, slower than the inline budget (so that its runs soon get tasks of
their own, which both pool processes take), and one that always fails and is never retried."""

from __future__ import annotations

import time

from tasks import Event, listener


@listener("gauge", name="metrics.fine")
def fine(event: Event) -> None:
    time.sleep(0.05)


@listener("gauge", name="metrics.broken", max_retries=0)
def broken(event: Event) -> None:
    raise RuntimeError("always broken")
