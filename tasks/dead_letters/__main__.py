"""``python -m tasks.dead_letters``: the same as ``notifier-dead-letters``."""

import sys

from tasks.dead_letters.cli import main

sys.exit(main())
