"""notifier.heartbeat: the entries notifier adds to Kinto's /__heartbeat__ (the Kinto server's
answer, broker up and down: tests/integration/test_kinto.py)."""

import logging
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from notifier.heartbeat import outbox_heartbeat


@dataclass
class Outbox:
    """Stands in for the outbox: what its table holds, or what reading it raises."""

    count: int = 0
    oldest: float | None = None
    relay_after: float = 10.0
    raises: Exception | None = None

    def waiting(self):
        if self.raises is not None:
            raise self.raises
        return self.count, self.oldest


def test_an_outbox_whose_rows_are_published_in_time_is_up():
    assert outbox_heartbeat(Outbox(count=3, oldest=19.0))(None) is True
    assert outbox_heartbeat(Outbox())(None) is True


def test_an_outbox_with_a_row_waiting_over_twice_the_relay_delay_is_down(caplog):
    with caplog.at_level(logging.WARNING, logger="notifier"):
        assert outbox_heartbeat(Outbox(count=3, oldest=21.0))(None) is False

    assert "3 messages in the outbox, the oldest waiting for 21 s" in caplog.text


def test_an_outbox_that_cannot_be_read_is_down(caplog):
    unreadable = Outbox(raises=OperationalError("SELECT", {}, Exception("no such table")))

    with caplog.at_level(logging.WARNING, logger="notifier"):
        assert outbox_heartbeat(unreadable)(None) is False

    assert "heartbeat: the outbox cannot be read (OperationalError" in caplog.text
