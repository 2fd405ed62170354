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

import os
import re

from notifier.errors import ConfigurationError, ListenerError
from notifier.settings import split_names
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


def _register_search_index() -> None:
    # Checked when a worker starts: a bad resource name or an index it cannot write.
    resources = split_names(app.conf.notifier_search_resources)
    parents = split_names(app.conf.notifier_search_parents)
    if not resources:
        return
    if any(not re.fullmatch(r"\w+", name) or name in resources for name in parents):
        raise ConfigurationError(
            "NOTIFIER_SEARCH_PARENTS",
            app.conf.notifier_search_parents,
            "resource names (letters, digits, _) separated by spaces or commas, none of them "
            "in NOTIFIER_SEARCH_RESOURCES",
        )
    try:
        listener(resources, name="notifier.search_index", parents=parents)(update_search_index)
    except ListenerError:
        raise ConfigurationError(
            "NOTIFIER_SEARCH_RESOURCES",
            app.conf.notifier_search_resources,
            "resource names (letters, digits, _) separated by spaces or commas",
        ) from None
    directory = os.path.dirname(os.path.abspath(app.conf.notifier_search_index))
    if not os.access(directory, os.W_OK):
        raise ConfigurationError(
            "NOTIFIER_SEARCH_INDEX",
            app.conf.notifier_search_index,
            "a file in a directory that exists and that this worker can write to",
        )


_register_search_index()
