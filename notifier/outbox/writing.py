"""Writing a transaction's messages into the outbox table, inside that very transaction.

The rows are added to the session of the request's transaction (see :mod:`notifier.outbox.hosts`
for how it is found), so that they commit, or roll back, with the changes they describe. A row
that cannot be written fails the transaction: its changes must not commit without it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from notifier.errors import OutboxError
from notifier.outbox.table import INSERT
from notifier.wire.message import Message

__all__ = ["SessionOf", "write_rows"]

#: How a request's session is found: a context manager giving the session of its transaction.
SessionOf = Callable[[Any], contextlib.AbstractContextManager[Any]]


def write_rows(session_of: SessionOf, request: Any, outgoing: list[tuple[Message, str]]) -> None:
    """Add the rows of ``outgoing`` (message, queue) to the transaction of ``request``."""
    created = time.time()
    rows = [
        {
            "task_id": message.task_id,
            "queue": queue,
            "message": json.dumps(message.as_dict()),
            "created": created,
        }
        for message, queue in outgoing
    ]
    with session_of(request) as session:
        # The application's own pending changes first, so that their errors stay theirs.
        session.flush()
        _insert(session, rows)


def _insert(session: Any, rows: list[dict[str, Any]]) -> None:
    try:
        session.execute(INSERT, rows)
    except OutboxError:
        raise
    except Exception as exc:
        raise OutboxError(
            f"could not write {len(rows)} messages to the outbox ({exc}): the transaction "
            "must not commit without them"
        ) from exc
