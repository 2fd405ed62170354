"""The convergence run's worker side (NOTIFIER_LISTENERS): a naive mirror of the articles, and
injected redeliveries for every listener.

The mirror writes what each event says, with no version check of its own: it ends equal to the
database only because it is an ordered listener. The search index (the built-in listener) keeps
its own versions. ``CONVERGENCE_REDELIVER`` is the chance that a delivery of a listener's
message is handed back to the broker, before or after the listener ran (a duplicate), at most
once per message.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

import redis
from celery import current_task
from celery.exceptions import Reject

from tasks import Event, listener
from tasks.app import registry
from tests.integration.convergence import MIRROR, REDELIVERED

_redis = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
_chance = float(os.environ.get("CONVERGENCE_REDELIVER", "0"))
_random = random.Random(f"{os.environ.get('CONVERGENCE_SEED', '0')}:{os.getpid()}")


@listener("article", parents=("blog",), ordered=True, max_retries=10)
def mirror_articles(event: Event) -> None:
    if event.resource_name == "blog":
        # What the blog held when it was deleted: not what a re-created blog holds since.
        for delete in event.parent_deletes():
            prefix = f"{delete.scope['blog_id']}/".encode()
            doomed = [
                key
                for key, article in _redis.hgetall(MIRROR).items()
                if key.startswith(prefix)
                and json.loads(article)["last_modified"] <= (delete.last_modified or 0)
            ]
            if doomed:
                _redis.hdel(MIRROR, *doomed)
        return
    blog_id = event.payload.get("blog_id", "")
    for change in event.impacted_records:
        new, old = change.get("new") or {}, change.get("old") or {}
        key = f"{blog_id}/{new.get('id', old.get('id'))}"
        if event.action == "delete" or new.get("deleted"):
            _redis.hdel(MIRROR, key)
        else:
            _redis.hset(MIRROR, key, json.dumps(new, sort_keys=True))


def _hand_back_once() -> bool:
    # Once per message at most: a listener's deliveries are bounded (then a dead letter).
    task_id = current_task.request.id
    return _random.random() < _chance and bool(_redis.sadd(REDELIVERED, task_id))


def _with_redeliveries(run: Callable[..., Any]) -> Callable[..., Any]:
    def flaky_run(*args: Any, **kwargs: Any) -> Any:
        if _hand_back_once():
            raise Reject("injected redelivery, before the listener ran", requeue=True)
        result = run(*args, **kwargs)
        if _hand_back_once():
            raise Reject("injected redelivery, after the listener ran", requeue=True)
        return result

    return flaky_run


if _chance:
    for _listener in registry:
        _listener.task.run = _with_redeliveries(_listener.task.run)  # type: ignore[method-assign]
