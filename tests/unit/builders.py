"""Builders the unit tests share: messages as the web side sends them, and what dispatch does
with one."""

import json

from notifier.wire.message import decode, encode
from tasks.dispatch.fan_out import fan_out
from tasks.dispatch.run import DispatchRun

#: The dispatch queue of the tests.
QUEUE = "notifier"


def message(resource_name="article", action="create", *, ids=("a1",), request_id="req-1"):
    """A message of ``action`` on records ``ids`` of ``resource_name``, as a worker receives
    it (through JSON)."""
    payload = {"resource_name": resource_name, "action": action, "uri": f"/{resource_name}s"}
    impacted = [{"new": {"id": record_id}} for record_id in ids]
    data = encode(payload, impacted, list(range(len(impacted))), request_id).as_dict()
    return json.loads(json.dumps(data))


def fan_out_to(registry, data, only=None, taker=None):
    """Fan ``data`` out as a dispatch run does: decoded once, to the listeners of ``registry``
    that want it (of those named in ``only``)."""
    decoded = decode(data)
    return fan_out(decoded, registry.matching(decoded, only), taker)


def dispatch_run(collaborators, queue=QUEUE, taker=None):
    """A dispatch run over ``queue`` with a worker's ``collaborators`` (those of
    :func:`tasks.wiring.collaborators`), as the dispatch task makes one."""
    return DispatchRun(
        collaborators.registry,
        collaborators.dead_letters,
        queue,
        taker if taker is not None else collaborators.taker,
        coverage=collaborators.coverage,
    )
