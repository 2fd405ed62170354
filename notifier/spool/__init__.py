"""The spool: messages the broker did not take, spooled until it does.

Without an outbox, a message the broker does not take (down, hung, refusing) is spooled: a web
process writes it to a SQLite file of its own in the spool directory, or, when the disk cannot
take it (full, read-only), holds it in a bounded queue in memory until the disk can. A
background thread publishes what waits, in order, every ``retry`` seconds until nothing is
left; while the process holds messages, new ones are spooled behind them. Only a message that
neither the disk nor memory can take is lost: logged at CRITICAL as lost, and
:meth:`Spool.write` raises :class:`~notifier.errors.SpoolFull`.

A message may be published twice (when its process dies between publishing and deleting it,
or cannot delete it from a full disk): its ``event_id`` tells.

The modules, one job each:

- :mod:`notifier.spool.file`: one spool file, and the lock of the process that owns it;
- :mod:`notifier.spool.memory`: the memory fallback;
- :mod:`notifier.spool.directory`: :class:`Spool`, the spool of one process, and the thread
  that flushes it;
- :mod:`notifier.spool.log`: what the flushes say, each trouble once;
- :mod:`notifier.spool.cli`: the ``notifier-spool`` command.
"""

from notifier.spool.cli import main
from notifier.spool.directory import Spool
from notifier.spool.file import SpoolFile

__all__ = ["Spool", "SpoolFile", "main"]
