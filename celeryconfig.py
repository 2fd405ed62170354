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
# A pool process killed mid-listener counts as a failed attempt: the listener is tried again
# (at once), until its max_retries are spent; then its message goes to the dead letters.
task_retry_on_worker_lost = True
task_soft_time_limit = 240
task_time_limit = 300

# The Redis transport hands an unacknowledged message out again once it is older than the
# visibility timeout: a short one brings back the messages of a worker that died (SIGKILL, a
# lost machine) within seconds. Living workers refresh the messages they hold (see
# tasks/broker/visibility.py), so that a listener still running is not handed out twice. In seconds:
# tasks/app.py checks it when it configures the worker, and derives the transport's
# visibility_timeout and its sweep for abandoned messages from it.
notifier_visibility_timeout = os.environ.get("NOTIFIER_VISIBILITY_TIMEOUT", "30")

# The modules of listeners every worker imports (space or comma separated), so that all the
# workers that dispatch events know the same listeners. `celery worker -I module` adds more.
imports = os.environ.get("NOTIFIER_LISTENERS", "").replace(",", " ").split()
# A worker that knows no listener refuses to start, unless it is meant only to dispatch (to the
# listeners other workers know): NOTIFIER_DISPATCH_ONLY=true.
notifier_dispatch_only = os.environ.get("NOTIFIER_DISPATCH_ONLY", "false")

# notifier's own settings (see the README).
notifier_routes = os.environ.get("NOTIFIER_ROUTES", "")
notifier_dead_letters_url = os.environ.get("NOTIFIER_DEAD_LETTERS_URL", broker_url)
notifier_order_url = os.environ.get("NOTIFIER_ORDER_URL", broker_url)
notifier_search_index = os.environ.get("NOTIFIER_SEARCH_INDEX", "search-index.sqlite3")
notifier_search_resources = os.environ.get("NOTIFIER_SEARCH_RESOURCES", "")
notifier_search_parents = os.environ.get("NOTIFIER_SEARCH_PARENTS", "")
