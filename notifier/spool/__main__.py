"""``python -m notifier.spool``: the ``notifier-spool`` command."""

from notifier.spool.cli import main

raise SystemExit(main())
