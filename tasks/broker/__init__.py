"""What knows the internals of Celery and of kombu's Redis transport, fenced in one package.

- :mod:`tasks.broker.versions`: the gate. Every shortcut below runs only on the Celery and
  kombu versions it was checked on (:func:`internals_checked`); on others the worker runs
  Celery's and kombu's own paths, and says so once.
- :mod:`tasks.broker.consuming`: the worker's consumer takes each message and registers it as
  unacknowledged in one step on the Redis server (a Lua script, ``take.lua``), so that a worker
  killed at any instant loses no message: what it held is handed out again once the
  visibility timeout is over.
- :mod:`tasks.broker.consumer`: Celery's consumer, with that channel, and what it cannot read
  kept as a dead letter.
- :mod:`tasks.broker.taking`: the dispatch task takes the dispatch messages queued behind its
  own (``take_dispatches.lua``).
- :mod:`tasks.broker.visibility`: a living worker keeps the messages it holds from being handed
  out again.
- :mod:`tasks.broker.tracing`: a listener task run inside the dispatch task, through the
  tracer Celery's worker runs it with.
- :mod:`tasks.broker.queue_order`: a worker takes the dispatch messages before the listeners'
  own tasks.

Each reliance on an internal is named where it is used, with the versions checked; the bounds
in ``pyproject.toml`` keep Celery and kombu to those versions, and the test command runs the
suite on the lowest and the newest of them. Nothing outside this package (and the task
protocol writer, :mod:`notifier.wire.protocol`) touches a private Celery or kombu name:
tests/unit/test_boundaries.py checks it.
"""

from tasks.broker.consuming import KOMBU_CHECKED, AtomicChannel, AtomicQoS
from tasks.broker.versions import CHECKED, internals_checked

__all__ = [
    # The gate
    "CHECKED",
    "internals_checked",
    # The consumer's channel
    "KOMBU_CHECKED",
    "AtomicChannel",
    "AtomicQoS",
]
