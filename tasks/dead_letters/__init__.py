"""Dead letters: the messages workers could not handle, kept in Redis with the reason.

:mod:`tasks.dead_letters.store` keeps them; its docstring shows the Redis layout.
"""

from tasks.dead_letters.store import DeadLetter, DeadLetters

__all__ = ["DeadLetter", "DeadLetters"]
