"""Celery configuration of the notifier workers, from the environment.

``celery -A tasks worker`` reads this module. The web side reads the same environment variables
(``CELERY_BROKER_URL``, ``NOTIFIER_ROUTES``) when its own ``notifier.*`` settings leave them out,
so one deployment declares its broker and routing table once.
"""

import os

broker_url = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")

# JSON only: a worker never unpickles what it reads from a queue.
task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True

# A listener's message is acknowledged once the listener finished, not when it started, so a
# worker that dies mid-listener leaves the message to be delivered again.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

# The Redis transport delivers an unacknowledged message again after the visibility timeout. It
# must be longer than any listener runs, or a slow listener runs twice: listeners are stopped
# after task_time_limit, and the timeout is twice that.
task_soft_time_limit = 240
task_time_limit = 300
broker_transport_options = {"visibility_timeout": 2 * task_time_limit}

# The modules of listeners every worker imports (space or comma separated), so that all the
# workers that dispatch events know the same listeners. `celery worker -I module` adds more.
imports = os.environ.get("NOTIFIER_LISTENERS", "").replace(",", " ").split()

# notifier's own settings (see the README).
notifier_routes = os.environ.get("NOTIFIER_ROUTES", "")
notifier_dead_letters_url = os.environ.get("NOTIFIER_DEAD_LETTERS_URL", broker_url)
notifier_search_index = os.environ.get("NOTIFIER_SEARCH_INDEX", "search-index.sqlite3")
notifier_search_resources = os.environ.get("NOTIFIER_SEARCH_RESOURCES", "")
