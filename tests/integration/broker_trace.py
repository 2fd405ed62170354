"""Where a lost message went: a record of every command the broker ran (``redis-cli monitor``),
read back for one task's message.

MONITOR shows each command a client sent (and those a Lua script ran, as ``[0 lua]``), not
replies: a message that a BRPOP took shows as pushed, then never touched again. What follows
one task's message (the dispatch task's, ``<event_id>``, or a listener's,
``<event_id>:<listener>``) through kombu's Redis transport:

- ``push``: LPUSH/RPUSH of its envelope into a queue's list (publish, retry, restore, give back);
- ``register``: HSET of it into ``unacked`` (kombu's ``QoS.append``, or a take script);
- ``forget``: HDEL of its delivery tag from ``unacked`` (an ack, a reject, or a restore, which
  pushes it again in the same transaction);
- ``receive``: a listener recording it (tests/integration/death_listeners.py).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import redis_server_binary

_LINE = re.compile(
    r'^(?P<time>\d+\.\d+) \[(?P<client>[^\]]+)\] "(?P<command>[A-Za-z]+)"(?P<rest>.*)$'
)
_TAG = re.compile(r'delivery_tag\\*": \\*"(?P<tag>[0-9a-f-]{32,36})')


class Monitor:
    """``redis-cli monitor`` of a redis-server, into a file, until :meth:`stop`."""

    def __init__(self, port: int, path: Path) -> None:
        binary = redis_server_binary()
        assert binary is not None
        cli = str(Path(binary).with_name("redis-cli"))
        self.path = path
        self._file = path.open("wb")
        self.process = subprocess.Popen(
            [cli, "-p", str(port), "monitor"], stdout=self._file, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(5)
        self._file.close()


@dataclass(frozen=True, slots=True)
class Step:
    time: float
    client: str
    what: str  # push, register, forget, receive
    detail: str


def history(path: Path, task_id: str, received_key: str | None = None) -> list[Step]:
    """What the broker did with the message of ``task_id``, in order (``received_key``: the hash
    its listener records it in)."""
    needle = f'\\"id\\": \\"{task_id}\\"'  # the task id in an envelope's headers
    tags: set[str] = set()
    steps: list[Step] = []
    with path.open(errors="replace") as lines:
        for line in lines:
            match = _LINE.match(line.rstrip("\n"))
            if match is None:
                continue
            command, rest = match["command"].upper(), match["rest"]
            at, client = float(match["time"]), match["client"]
            if needle in rest:
                tags.update(tag["tag"] for tag in _TAG.finditer(rest))
                if command in ("LPUSH", "RPUSH"):
                    queue = rest.split('"')[1]
                    steps.append(Step(at, client, "push", f"{command} {queue}"))
                elif command == "HSET" and rest.startswith(' "unacked"'):
                    steps.append(Step(at, client, "register", command))
            elif command == "HDEL" and rest.startswith(' "unacked"') and tags:
                if any(f'"{tag}"' in rest for tag in tags):
                    steps.append(Step(at, client, "forget", command))
            elif (
                received_key is not None
                and command == "HINCRBY"
                and f'"{received_key}" "{task_id.split(":")[0]}"' in rest
            ):
                steps.append(Step(at, client, "receive", received_key))
    return steps


def where_lost(steps: list[Step]) -> str:
    """Say where the message's trail ends."""
    if not steps:
        return "never pushed"
    last = steps[-1]
    if last.what == "push":
        return (
            f"pushed ({last.detail}) and taken by a BRPOP that never registered it as "
            "unacknowledged"
        )
    if last.what == "register":
        return "registered as unacknowledged, and never acknowledged nor restored"
    if last.what == "forget":
        return "acknowledged (forgotten from unacked) without reaching its listener"
    return last.what
