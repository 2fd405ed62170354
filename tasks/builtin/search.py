"""The built-in search index listener: the worker's changes applied to a
:class:`~tasks.builtin.search_index.SearchIndex` (the index, its schema and how to read it).

Workers index the resources named in ``NOTIFIER_SEARCH_RESOURCES`` (space or comma separated)
into the SQLite file ``NOTIFIER_SEARCH_INDEX``; the deletes of the resources named in
``NOTIFIER_SEARCH_PARENTS`` (Kinto: ``bucket collection``) drop every record under them. The
listener is registered when a worker starts (:func:`register_search_index`, from
:func:`tasks.settings.configure`).
"""

from __future__ import annotations

import os
import re
from functools import cache
from typing import TYPE_CHECKING, Any

from notifier.errors import ConfigurationError, ListenerError
from notifier.wire.payload import split_names
from tasks.builtin.search_index import SearchIndex
from tasks.listeners.event import Event

if TYPE_CHECKING:
    from tasks.listeners.registry import Registry

__all__ = ["SearchIndex", "register_search_index", "update_search_index"]


@cache
def _index(path: str) -> SearchIndex:
    return SearchIndex(path)


@cache
def _parents(setting: str) -> frozenset[str]:
    return frozenset(split_names(setting))


def update_search_index(event: Event) -> None:
    """The built-in listener: apply ``event`` to the index at ``NOTIFIER_SEARCH_INDEX``; the
    deletes of ``NOTIFIER_SEARCH_PARENTS`` drop what is under them."""
    from tasks.app import app

    _index(app.conf.notifier_search_index).apply(event, _parents(app.conf.notifier_search_parents))


def register_search_index(registry: Registry, conf: Any) -> None:
    """Register the built-in listener with ``registry`` when the worker's settings ``conf``
    name resources (``NOTIFIER_SEARCH_RESOURCES``); checked at worker start."""
    resources = split_names(conf.notifier_search_resources)
    parents = split_names(conf.notifier_search_parents)
    if not resources:
        return
    if any(not re.fullmatch(r"\w+", name) or name in resources for name in parents):
        raise ConfigurationError(
            "NOTIFIER_SEARCH_PARENTS",
            conf.notifier_search_parents,
            "resource names (letters, digits, _) separated by spaces or commas, none of them "
            "in NOTIFIER_SEARCH_RESOURCES",
        )
    try:
        registry.listener(resources, name="notifier.search_index", parents=parents)(
            update_search_index
        )
    except ListenerError:
        raise ConfigurationError(
            "NOTIFIER_SEARCH_RESOURCES",
            conf.notifier_search_resources,
            "resource names (letters, digits, _) separated by spaces or commas",
        ) from None
    directory = os.path.dirname(os.path.abspath(conf.notifier_search_index))
    if not os.access(directory, os.W_OK):
        raise ConfigurationError(
            "NOTIFIER_SEARCH_INDEX",
            conf.notifier_search_index,
            "a file in a directory that exists and that this worker can write to",
        )
