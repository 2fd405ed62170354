"""What ``@listener`` accepts: each argument checked when the decorator is applied, with an
error (:class:`~notifier.errors.ListenerError`) that says what is wrong and what to write."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from notifier.errors import ListenerError
from notifier.wire.payload import ACTIONS

__all__ = [
    "TASK_OPTIONS",
    "check_actions",
    "check_parents",
    "check_resources",
    "check_task_options",
    "check_where",
]

_ACTION_NAMES = tuple(action.value for action in ACTIONS)
_RESOURCE_NAME = re.compile(r"^(\*|[A-Za-z0-9_]+)$")

#: The Celery task options a plain-function listener may set (see Celery's Task attributes).
TASK_OPTIONS = frozenset(
    {
        "max_retries",
        "default_retry_delay",
        "autoretry_for",
        "dont_autoretry_for",
        "retry_kwargs",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "rate_limit",
        "time_limit",
        "soft_time_limit",
        "acks_late",
        "reject_on_worker_lost",
        "priority",
    }
)


def check_task_options(options: Mapping[str, Any]) -> None:
    """The Celery task options of a plain-function listener: those of :data:`TASK_OPTIONS`."""
    unknown = sorted(set(options) - TASK_OPTIONS)
    if unknown:
        raise ListenerError(
            f"unknown listener options {unknown}: @listener takes actions, name, queue and "
            f"the Celery task options {sorted(TASK_OPTIONS)}"
        )


def check_resources(resource_names: str | Iterable[str]) -> frozenset[str]:
    names = [resource_names] if isinstance(resource_names, str) else list(resource_names)
    bad = [n for n in names if not isinstance(n, str) or not _RESOURCE_NAME.match(n)]
    if not names or bad:
        raise ListenerError(
            f"bad resource names {bad or names!r}: use resource names like 'article', "
            "or '*' for every resource"
        )
    return frozenset(names)


def check_parents(parents: Any, resources: frozenset[str]) -> frozenset[str]:
    names = [parents] if isinstance(parents, str) else list(parents)
    bad = [
        n
        for n in names
        if not isinstance(n, str) or not _RESOURCE_NAME.match(n) or n == "*" or n in resources
    ]
    if bad:
        raise ListenerError(
            f"bad parents {bad!r}: name the resources whose deletes drop this listener's "
            "records, e.g. parents=('bucket', 'collection'), other than its own resources"
        )
    if names and "*" in resources:
        raise ListenerError(
            f"parents={names!r} with every resource ('*'): name the listener's resources, "
            "so that a parent's delete is not also one of its own objects' deletes"
        )
    return frozenset(names)


def check_where(where: Any) -> dict[str, frozenset[str]]:
    how = (
        "use payload keys and the values they must have, e.g. where={'bucket_id': 'blog'} "
        "or where={'collection_id': ['posts', 'pages']}"
    )
    if not isinstance(where, Mapping):
        raise ListenerError(f"bad where={where!r}: {how}")
    checked = {}
    for key, values in where.items():
        if isinstance(values, str):
            allowed = [values]
        elif isinstance(values, Iterable) and not isinstance(values, Mapping):
            allowed = list(values)
        else:
            allowed = []
        if (
            not isinstance(key, str)
            or not allowed
            or not all(isinstance(value, str) for value in allowed)
        ):
            raise ListenerError(f"bad where= entry {key!r}: {values!r}: {how}")
        checked[key] = frozenset(allowed)
    return checked


def check_actions(actions: Iterable[str]) -> frozenset[str]:
    if isinstance(actions, str):
        actions = [actions]
    names = list(actions)
    unknown = [a for a in names if a not in _ACTION_NAMES]
    if unknown or not names:
        raise ListenerError(
            f"unknown actions {unknown or names!r}: use some of {', '.join(_ACTION_NAMES)}"
        )
    return frozenset(names)
