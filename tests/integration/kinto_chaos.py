"""Concurrent writers against a Kinto that is SIGKILLed at random moments and started again.

``Writer`` threads create, update and delete records and send small ``/batch`` requests, some
with a ``/__conflict__`` in them (what precedes it rolls back, what follows it commits in a new
transaction). A request that gets no answer (Kinto killed under it, or not started yet) has an
unknown outcome: the writer notes it and goes on. ``write_while_killing`` runs them while it
kills Kinto at seeded random moments and starts it again where it was. What committed is in the
database's change log (tests/integration/change_log.py), not in what the writers were told.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.integration.kinto_app import KintoServer, kinto_request

CONFLICT = {"method": "POST", "path": "/__conflict__"}
#: The most record changes one request makes (a batch's writes): what one in-flight request
#: can publish, and so publish twice.
MOST_CHANGES_PER_REQUEST = 4


#: The status of a request that Kinto did not take (nothing listened): nothing happened.
REFUSED = "refused"
#: The status of a request that Kinto took and did not answer (killed under it): it may have
#: committed or not.
UNKNOWN = "unknown"

Status = int | str


def send(method: str, url: str, data: Any = None, timeout: float = 10) -> tuple[Status, Any]:
    """Kinto's status and body; ``(REFUSED, None)`` or ``(UNKNOWN, None)`` without an answer."""
    request = kinto_request(method, url, data)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:  # an answer, before the OSError it also is
        return error.code, None
    except urllib.error.URLError as error:
        if isinstance(error.reason, ConnectionRefusedError):
            return REFUSED, None
        return UNKNOWN, None
    except (OSError, http.client.HTTPException, ValueError):
        return UNKNOWN, None


class Writer(threading.Thread):
    """Random writes to the records of one collection, until ``stop`` is set."""

    def __init__(
        self, number: int, kinto_url: str, collection: str, seed: int, stop: threading.Event
    ) -> None:
        super().__init__(name=f"writer{number}", daemon=True)
        self.number = number
        self.kinto_url = kinto_url
        self.records = f"{collection}/records"
        self.random = random.Random(f"{seed}-{number}")
        self.stop = stop
        self.outcomes: Counter[str] = Counter()  # "create 201", "batch unknown", ...
        self.known: list[str] = []  # the ids of records that may exist
        self.created = 0
        self.version = 0  # every update writes a new value: an unchanged PATCH writes nothing

    def run(self) -> None:
        while not self.stop.is_set():
            kind = self.random.choices(("create", "update", "delete", "batch"), (4, 3, 1, 2))[0]
            if kind in ("update", "delete") and not self.known:
                kind = "create"
            status = self.batch() if kind == "batch" else self.one(kind)
            self.outcomes[f"{kind} {status}"] += 1
            if status in (REFUSED, UNKNOWN):
                time.sleep(0.1)  # Kinto is down: it is being started again

    def _new_id(self) -> str:
        self.created += 1
        record_id = f"w{self.number}-{self.created}"
        self.known.append(record_id)
        return record_id

    def _subrequest(self, kind: str) -> dict | None:
        if kind == "create":
            body = {"data": {"id": self._new_id(), "version": 0}}
            return {"method": "POST", "path": self.records, "body": body}
        if not self.known:
            return None
        record_id = self.random.choice(self.known)
        if kind == "delete":
            self.known.remove(record_id)
            return {"method": "DELETE", "path": f"{self.records}/{record_id}"}
        self.version += 1
        body = {"data": {"version": self.version}}
        return {"method": "PATCH", "path": f"{self.records}/{record_id}", "body": body}

    def one(self, kind: str) -> Status:
        subrequest = self._subrequest(kind)
        assert subrequest is not None  # run() chose a create when no record is known
        status, _ = send(
            subrequest["method"], self.kinto_url + subrequest["path"], subrequest.get("body")
        )
        if status == 404 and subrequest["method"] == "PATCH":
            self.known.remove(subrequest["path"].rsplit("/", 1)[1])  # never committed
        return status

    def batch(self) -> Status:
        size = self.random.randint(2, MOST_CHANGES_PER_REQUEST)
        kinds = self.random.choices(("create", "update", "delete"), (3, 2, 1), k=size)
        requests = [r for r in map(self._subrequest, kinds) if r is not None]
        if self.random.random() < 0.3:
            requests.insert(self.random.randint(0, len(requests)), CONFLICT)
        status, _ = send("POST", f"{self.kinto_url}/batch", {"requests": requests})
        return status


@dataclass
class Chaos:
    """What ``write_while_killing`` did."""

    seed: int
    kills: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)

    def __str__(self) -> str:
        requests = sum(self.outcomes.values())
        refused, unknown = (
            sum(n for outcome, n in self.outcomes.items() if outcome.endswith(f" {status}"))
            for status in (REFUSED, UNKNOWN)
        )
        return (
            f"seed {self.seed}: {requests} requests in {self.seconds:.1f} s, {self.kills} kills "
            f"of Kinto, {unknown} requests of unknown outcome, {refused} refused; "
            + ", ".join(f"{outcome}: {n}" for outcome, n in sorted(self.outcomes.items()))
        )


def write_while_killing(
    kinto: KintoServer,
    restart: Callable[[KintoServer], KintoServer],
    collections: list[str],
    *,
    writers: int,
    kills: int,
    seconds: float,
    seed: int,
) -> tuple[KintoServer, Chaos]:
    """Write for ``seconds`` with ``writers`` threads (to the records of ``collections``,
    paths under Kinto's ``/v1``), SIGKILLing ``kinto`` ``kills`` times at seeded random moments
    and replacing it with ``restart(killed)`` (on the same port); the last Kinto runs on.

    The kills fall in the first ``seconds - 2``, each at least a second after the last restart,
    and the last Kinto serves two seconds at least, so that every Kinto serves writes (the run
    takes longer than ``seconds`` when the restarts do)."""
    chaos = Chaos(seed)
    stop = threading.Event()
    threads = [
        Writer(n, kinto.url, collections[n % len(collections)], seed, stop) for n in range(writers)
    ]
    rng = random.Random(seed)
    started = time.monotonic()
    kill_at = sorted(rng.uniform(0.5, max(0.5, seconds - 2)) for _ in range(kills))
    for thread in threads:
        thread.start()
    up_since = started
    try:
        for moment in kill_at:
            # Each Kinto serves a while before it is killed: one killed as soon as it answers
            # would have no request in flight.
            time.sleep(
                max(0.0, started + moment - time.monotonic(), up_since + 1 - time.monotonic())
            )
            kinto.kill()
            kinto.stop()  # closes its log: the next one appends to it
            chaos.kills += 1
            kinto = restart(kinto)
            up_since = time.monotonic()
        time.sleep(max(0.0, started + seconds - time.monotonic(), up_since + 2 - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    chaos.seconds = time.monotonic() - started
    for thread in threads:
        chaos.outcomes.update(thread.outcomes)
    return kinto, chaos
