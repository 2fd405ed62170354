"""``python -m notifier.outbox``: the ``notifier-outbox`` command."""

from notifier.outbox.cli import main

raise SystemExit(main())
