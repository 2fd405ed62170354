"""The worker side of notifier: the Celery app, ``@listener`` and the dispatch task.

Start workers with ``celery -A tasks worker -l info`` (add ``-I mymodule`` to load a module of
your own listeners, ``-Q`` to choose queues). Declare a listener::

    from tasks import listener

    @listener("article", actions=("create", "update"))
    def index_article(event):
        for change in event.impacted_records:
            ...  # change["new"], change.get("old")

This package never imports Pyramid: workers do not need it installed.
"""

from __future__ import annotations

from tasks import startup as _startup  # noqa: F401  (connects the worker's start-up checks)
from tasks.app import app
from tasks.app import registry as _registry
from tasks.builtin.search import SearchIndex, update_search_index
from tasks.dead_letters import DeadLetter, DeadLetters
from tasks.dispatch import task as _dispatch  # noqa: F401  (registers the dispatch task)
from tasks.listeners.event import Event
from tasks.listeners.registry import Listener, Registry

__all__ = [
    # the Celery app
    "app",
    # declaring listeners
    "Event",
    "Listener",
    "Registry",
    "listener",
    # built-in listeners
    "SearchIndex",
    "update_search_index",
    # dead letters
    "DeadLetter",
    "DeadLetters",
]

#: Register a listener with this worker: ``@listener("article", actions=("create",))``.
listener = _registry.listener
