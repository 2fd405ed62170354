"""Celery's task protocol, written by hand: the task message a worker takes from a Redis list.

What both sides write into a queue without Celery's producer: the web side publishes each
message as one ``LPUSH`` (:class:`notifier.publisher.CeleryPublisher`), and the worker's
taker sends a listener's task in the same round trip that takes its message
(``tasks/broker/taking.py``). Both write what ``app.send_task(name, args, queue=queue)``
would, so a stock ``celery worker`` consumes it.

The internals relied on, checked on Celery 5.7.0 and kombu 5.7.0:

- **Celery's task protocol, version 2** (``celery.app.amqp.AMQP.as_task_v2``): the headers
  (:data:`_HEADERS`, plus ``task``, ``id``, ``root_id``, ``argsrepr`` and ``origin``), and
  the body ``[args, kwargs, embed]`` with ``embed`` naming no callbacks, errbacks, chain or
  chord.
- **kombu's Redis transport layout** (``kombu.transport.redis.Channel._put``, with the
  envelope of ``kombu.transport.virtual.Channel.prepare_message`` and
  ``_inplace_augment_message``): a message of priority 0 is the JSON envelope ``{"body",
  "content-encoding", "content-type", "headers", "properties"}`` pushed with ``LPUSH`` onto
  the list named after the queue (other priorities go to ``<queue>\\x06\\x16<priority>``,
  never written here); ``properties`` carry the ``delivery_info`` (exchange, routing key)
  and a ``delivery_tag`` of their own, which is what kombu's ``unacked`` hash is keyed by.
  The body is left as plain JSON: without ``properties.body_encoding`` kombu reads it as it
  is (its default, base64, is optional).

The headers carry the current trace context, when OpenTelemetry is installed
(:mod:`notifier.wire.trace_context`). Celery's ``before_task_publish`` and
``after_task_publish`` signals are sent for each message
written, as ``send_task`` sends them (:func:`task_message` and :func:`published`), when they
have receivers: what a ``before_task_publish`` receiver adds to the headers is in the message
(OpenTelemetry's Celery instrumentation adds the trace's context so). Without receivers the
message is written from strings, as fast as before.

A new Celery or kombu release may change either: the tests in ``tests/unit/test_publisher.py``
compare this message with what Celery's own ``send_task`` writes.

Beside the other internals notifier relies on: docs/internals.md,
"The protocol writer".
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import signals
from celery.utils.nodenames import anon_nodename

from notifier.wire import trace_context

__all__ = [
    "argsrepr",
    "direct_redis_url",
    "published",
    "redis_url",
    "signalled",
    "task_message",
]

#: What Celery 5's ``send_task`` puts in every task message besides the task's name and id (task
#: protocol 2): no eta, no expiry, no group, no time limits, no parent, and ``ignore_result``
#: None: the worker uses the task's own setting (``task_ignore_result``).
_HEADERS: dict[str, object] = {
    "lang": "py",
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "timelimit": [None, None],
    "kwargsrepr": "{}",
    "ignore_result": None,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}
# The body's third element: no callbacks, errbacks, chain or chord.
_EMBED: dict[str, object] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = anon_nodename()  # what Celery's client names itself: gen<pid>@<host>
# The parts of the envelope that never change, encoded once: a message encodes only its own.
_SAME_HEADERS = json.dumps({**_HEADERS, "origin": _ORIGIN})[1:-1]


def task_message(
    task: str, task_id: str, args: list[object], queue: str, *, parent_id: str | None = None
) -> str:
    """The JSON that kombu's Redis transport keeps in a queue's list for the Celery task
    ``task`` sent with ``args`` to ``queue``, as ``send_task(task, args, queue=queue)`` would;
    ``parent_id``: the task that sends it, whose id is its root's too (None: it is its own
    root). Sends ``before_task_publish`` (see the module's doc): call :func:`published` once
    the broker has it.

    Unlike Celery, the body is not base64-encoded (kombu's ``body_encoding`` is optional: a
    1 KB message stays about 1 KB instead of becoming 2.7 KB); the exchange is the default one,
    so that the message is restored to ``queue`` by name after a worker died holding it; and
    ``argsrepr`` names the message instead of repeating it (a worker's log shows it).
    """
    trace = trace_context.current()
    if signals.before_task_publish.receivers:
        return _signalled(task, task_id, args, queue, parent_id, trace)
    body = json.dumps([args, {}, _EMBED], separators=(",", ":"))
    root_id = json.dumps(parent_id or task_id)
    task_id = json.dumps(task_id)
    traced = "".join(f", {json.dumps(key)}: {json.dumps(value)}" for key, value in trace.items())
    headers = (
        f'{{{_SAME_HEADERS}, "task": {json.dumps(task)}, "id": {task_id}, '
        f'"root_id": {root_id}, "parent_id": {json.dumps(parent_id)}, '
        f'"argsrepr": {json.dumps(argsrepr(args))}{traced}}}'
    )
    properties = (
        f'{{"correlation_id": {task_id}, "reply_to": "", "delivery_mode": 2, '
        f'"delivery_info": {{"exchange": "", "routing_key": {json.dumps(queue)}}}, '
        f'"priority": 0, "delivery_tag": "{uuid.uuid4().hex}"}}'
    )
    # The body, the largest part, is encoded once and escaped once (not parsed again).
    return (
        f'{{"body":{json.dumps(body)},"content-encoding":"utf-8",'
        f'"content-type":"application/json","headers":{headers},"properties":{properties}}}'
    )


def _signalled(
    task: str,
    task_id: str,
    args: list[object],
    queue: str,
    parent_id: str | None,
    trace: dict[str, str],
) -> str:
    # The message as dicts, which the receivers of before_task_publish are given (and may add
    # headers to), as Celery's AMQP.send_task_message gives them; then encoded.
    headers: dict[str, object] = {
        **_HEADERS,
        "origin": _ORIGIN,
        "task": task,
        "id": task_id,
        "root_id": parent_id or task_id,
        "parent_id": parent_id,
        "argsrepr": argsrepr(args),
        **trace,
    }
    body: tuple[object, ...] = (args, {}, dict(_EMBED))
    properties: dict[str, object] = {
        "correlation_id": task_id,
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "delivery_tag": uuid.uuid4().hex,
    }
    signals.before_task_publish.send(
        sender=task,
        body=body,
        exchange="",
        routing_key=queue,
        headers=headers,
        properties=properties,
        declare=[],
        retry_policy=None,
    )
    envelope = {
        "body": json.dumps(body, separators=(",", ":")),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }
    return json.dumps(envelope)


def signalled() -> bool:
    """Whether Celery's publish signals have receivers: then each message is written on its
    own, ``before_task_publish``, the write, ``after_task_publish``, as ``send_task`` does."""
    return bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)


def published(message: str) -> None:
    """Send ``after_task_publish`` for ``message`` (what :func:`task_message` returned), which
    the broker took, when the signal has receivers."""
    if not signals.after_task_publish.receivers:
        return
    envelope = json.loads(message)
    headers = envelope["headers"]
    signals.after_task_publish.send(
        sender=headers["task"],
        body=tuple(json.loads(envelope["body"])),
        exchange="",
        routing_key=envelope["properties"]["delivery_info"]["routing_key"],
        headers=headers,
    )


def argsrepr(args: Sequence[object]) -> str:
    """The ``argsrepr`` of a task sent or run with ``args``: what the worker's log shows of
    them. Celery's repr of a 1 KB message costs more than sending it, and floods the log."""
    message = args[0] if len(args) == 1 else None
    if isinstance(message, dict) and "event_id" in message:
        payload = message.get("payload")
        uri = payload.get("uri") if isinstance(payload, dict) else None
        return (
            f"[<message {message['event_id']}: {message.get('action')} "
            f"{message.get('resource_name')} {uri} {_record_ids(message)}, "
            f"part {message.get('part', 0)}>]"
        )
    if isinstance(message, list) and message and isinstance(message[0], dict):
        return f"[<{len(message)} messages, from {message[0].get('event_id')}>]"
    return f"[<{len(args)} arguments>]"


def _record_ids(message: dict[str, Any]) -> str:
    # The ids of the records a message changes, the first few of them: "(r1, r2 and 8 more)".
    records = message.get("impacted_records")
    ids = []
    for record in records if isinstance(records, list) else []:
        version = (record.get("new") or record.get("old")) if isinstance(record, dict) else None
        if isinstance(version, dict) and "id" in version:
            ids.append(str(version["id"]))
    shown = ", ".join(ids[:3])
    return f"({shown} and {len(ids) - 3} more)" if len(ids) > 3 else f"({shown})"


def direct_redis_url(broker_url: str) -> str | None:
    """The redis-py URL of a kombu broker URL that redis-py connects to as kombu does, or None:
    a plain ``redis://`` or ``redis+socket://`` URL without a query. A query means something
    else to each (kombu reads ``ssl_cert_reqs=CERT_REQUIRED``, which redis-py refuses, and
    takes a socket URL's query as its own options); TLS, Sentinel and failover URLs are left
    to kombu."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "redis+socket") or parts.query or ";" in broker_url:
        return None
    return redis_url(broker_url)


def redis_url(broker_url: str) -> str:
    """The redis-py URL of a kombu Redis broker URL (``redis+socket://`` is ``unix://``)."""
    parts = urlsplit(broker_url)
    if parts.scheme == "redis+socket":
        return urlunsplit(("unix", *parts[1:]))
    return broker_url
