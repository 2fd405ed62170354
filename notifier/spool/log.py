"""What the spool says about its rounds: each trouble once, and once more when it is over.

The spool's thread tries again every ``retry`` seconds however long the broker or the disk
stays in trouble: a failure is logged once at WARNING or ERROR, then at INFO while it lasts,
and at WARNING when it works again, so that an outage of an hour is a few lines, not thousands.
"""

from __future__ import annotations

import logging

__all__ = ["SpoolLog", "broker_trouble", "cause"]

logger = logging.getLogger("notifier")

# The top-level packages whose errors say that the broker is down, hung or refusing: logged
# without a traceback. Any other error a publish raises is logged with one.
_BROKER_CLIENTS = frozenset({"redis", "kombu", "amqp", "celery"})


def broker_trouble(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a publish, says the broker is down, hung or refusing: what
    notifier handles (the spool, the outbox), logged as one line without a traceback."""
    return isinstance(exc, OSError) or type(exc).__module__.partition(".")[0] in _BROKER_CLIENTS


def cause(exc: BaseException) -> str:
    """``exc`` as a log line names it: its type and message."""
    return f"{type(exc).__name__}: {exc}"


class SpoolLog:
    """The log of one spool, which tries again every ``retry`` seconds."""

    def __init__(self, retry: float) -> None:
        self.retry = retry
        self._refusing = ""  # what the broker raised in the previous flush, as logged
        self._failures: dict[str, str] = {}  # what failed in the previous flush, as logged

    def flushed(self, published: int, refusal: Exception | None, waiting: int, more: bool) -> None:
        """Say how a flush went: ``published`` messages, stopped by the broker's ``refusal``
        (or not), with ``waiting`` messages of this process left, ``more`` when anything
        waits (other processes' files included)."""
        if refusal is not None:
            refused = cause(refusal)
            if refused == self._refusing:
                logger.info("the broker still does not take messages (%s)", refused)
            else:
                expected = broker_trouble(refusal)
                logger.warning(
                    "the broker does not take messages (%s); the spool tries again every %g s "
                    "(%d messages of this process wait)",
                    refused,
                    self.retry,
                    waiting,
                    exc_info=None if expected else refusal,
                )
            self._refusing = refused
            return
        self._refusing = ""
        if published and more:
            logger.info(
                "published %d spooled messages; %d of this process wait", published, waiting
            )
        elif published:
            logger.warning("published %d spooled messages; spool empty", published)

    def failed(self, what: str, exc: Exception) -> None:
        """Say that ``what`` (reading a file, writing to disk...) failed with ``exc``."""
        failure = f"{type(exc).__name__}: {exc}"
        if self._failures.get(what) == failure:
            logger.info("spool: %s still fails (%s)", what, failure)
            return
        self._failures[what] = failure
        logger.error(
            "spool: %s failed (%s); tried again every %g s",
            what,
            failure,
            self.retry,
            exc_info=exc,
        )

    def works_again(self, what: str) -> None:
        """Say that ``what`` works again, if it failed."""
        if self._failures.pop(what, None) is not None:
            logger.warning("spool: %s works again", what)
