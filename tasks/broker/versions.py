"""The gate: the worker's shortcuts into Celery and kombu run only on the versions they were
checked on.

Each shortcut of this package leans on names Celery or kombu do not promise to keep (each is
named where it is used, with the versions it was read on). A release may rename or change them
without notice, and a shortcut that guessed wrong would lose messages silently. So each one
asks :func:`internals_checked` first; on a Celery or kombu whose major.minor is not in
:data:`CHECKED`, it runs Celery's and kombu's own paths instead, and one WARNING says so, naming
the versions found and those checked. Off, then:

- the consumer's atomic take (tasks/broker/consuming.py, ``take.lua``) and its check of each
  queue item before kombu parses it (tasks/broker/consumer.py): kombu's BRPOP takes, and a
  queue item that is not a kombu message stops the worker, as with Celery alone;
- the dispatch task's taker (tasks/broker/taking.py): one dispatch task per message;
- the refresh of the messages a worker holds (tasks/broker/visibility.py): a message held
  longer than the visibility timeout is handed out again;
- listeners run in dispatch (tasks/dispatch/inline.py, through :mod:`tasks.broker.tracing`):
  every listener runs as its own task.

``pyproject.toml`` bounds Celery and kombu to the same minor versions; this gate is for an
install that went past the bounds (``--no-deps``, a constraints file, a vendored copy).

Beside the other internals notifier relies on: docs/internals.md,
"Versions checked".
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import version

__all__ = ["CHECKED", "installed_versions", "internals_checked"]

logger = logging.getLogger("notifier")

#: The major.minor versions of Celery and kombu whose internals this package was checked on:
#: read, and the whole suite run (on the lowest and the newest release of each).
CHECKED: dict[str, tuple[str, ...]] = {"celery": ("5.7",), "kombu": ("5.7",)}


@cache
def installed_versions() -> dict[str, str]:
    """The installed versions of Celery and kombu: read once per process (reading a package's
    metadata costs about a millisecond, and dispatch asks for each message)."""
    return {name: version(name) for name in CHECKED}


def internals_checked() -> bool:
    """Whether the installed Celery and kombu are versions whose internals were checked
    (:data:`CHECKED`). When not, the first call logs a WARNING naming both."""
    found = installed_versions()
    if all(_minor(found[name]) in CHECKED[name] for name in CHECKED):
        return True
    _warn(tuple(found.items()))
    return False


def _minor(release: str) -> str:
    return ".".join(release.split(".")[:2])


@cache
def _warn(found: tuple[tuple[str, str], ...]) -> None:
    # Once per process and versions found; a worker asks in its main process first (its
    # consumer is made before the pool forks), so that its pool processes do not say it again.
    logger.warning(
        "%s: notifier's shortcuts into Celery and kombu were checked on %s only; they are off "
        "(no atomic take, no dispatch taker, no refresh of held messages, no inline runs), and "
        "the worker runs Celery's and kombu's own paths",
        ", ".join(f"{name} {release}" for name, release in found),
        ", ".join(f"{name} {' '.join(CHECKED[name])}" for name in CHECKED),
    )
