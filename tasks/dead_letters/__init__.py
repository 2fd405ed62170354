"""Dead letters: the messages workers could not handle, kept in Redis with the reason.

:mod:`tasks.dead_letters.store` keeps them (its docstring shows the Redis layout);
:mod:`tasks.dead_letters.cli` is ``notifier-dead-letters`` (``python -m tasks.dead_letters``),
the command that lists, shows, replays and purges them.
"""

from tasks.dead_letters.store import DeadLetter, DeadLetters

__all__ = ["DeadLetter", "DeadLetters"]
