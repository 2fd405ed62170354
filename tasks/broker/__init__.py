"""What knows the internals of kombu's Redis transport, fenced in one package.

- :mod:`tasks.broker.consuming`: the worker's consumer takes each message and registers it as
  unacknowledged in one step on the Redis server (a Lua script, ``take.lua``), so that a worker
  killed at any instant loses no message: what it held is handed out again once the
  visibility timeout is over.

Each reliance on a kombu internal is named where it is used, with the kombu versions checked.
"""

from tasks.broker.consuming import KOMBU_CHECKED, AtomicChannel, AtomicQoS

__all__ = ["KOMBU_CHECKED", "AtomicChannel", "AtomicQoS"]
