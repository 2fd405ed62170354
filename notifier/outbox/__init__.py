"""The transactional outbox: messages that commit, or roll back, with the changes they describe.

For hosts whose data lives in a SQL database (Kinto on PostgreSQL, a Pyramid app with
SQLAlchemy and ``zope.sqlalchemy``), the messages of a transaction are written to the table
``notifier_outbox`` in that very transaction (:meth:`Outbox.write`). Once it committed they are
handed to the process's background thread (:meth:`Outbox.submit`), which publishes them at
once, in commit order, and deletes their rows a few at a time: the request waits for neither
the broker nor the delete. A row stays when its process died before publishing it, or when the
broker did not take it: the relay publishes it.

The relay (:meth:`Outbox.relay`: a thread of each web process, or ``notifier-outbox relay``)
takes, oldest first, the rows this process could not publish and every row older than
``relay_after`` seconds (left by a process that died or is stuck), publishes them and deletes
them in one transaction.

A message is published twice when its process dies between publishing it and deleting its row,
or when a relay takes a row whose own process is slower than ``relay_after`` to publish it: its
``event_id`` tells. The table is created by ``notifier-outbox create``, never by a request.

The modules, one job each:

- :mod:`notifier.outbox.table`: the table and its SQL;
- :mod:`notifier.outbox.writing`: writing the rows in the request's transaction;
- :mod:`notifier.outbox.relay`: :class:`Outbox`, publishing after the commit, and the relay
  (its pass and its thread);
- :mod:`notifier.outbox.deleting`: the rows published and not deleted yet, deleted a few at a
  time, always before a relay could take them;
- :mod:`notifier.outbox.locking`: the relay's transactions, and SQLite's write lock in them;
- :mod:`notifier.outbox.hosts`: the outbox of a Pyramid or Kinto application, and how it finds
  each request's session;
- :mod:`notifier.outbox.cli`: the ``notifier-outbox`` command.
"""

from notifier.outbox.cli import main
from notifier.outbox.hosts import outbox_for
from notifier.outbox.relay import Outbox
from notifier.outbox.table import TABLE, create_table, engine_for, table_exists

__all__ = ["TABLE", "Outbox", "create_table", "engine_for", "main", "outbox_for", "table_exists"]
