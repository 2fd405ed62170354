"""The lag rows' writers (bench/lag.py): the example app in process, written at a steady rate,
open loop, and when each write was due, sent and committed.

:data:`WRITERS` processes of the bench's own (``python -m bench.steady``, started by
:class:`Writers`) each build the example app as ``examples/articles.ini`` configures it, with
the row's settings over it (its SQLite file, the bench's broker, the outbox on or off), and
call its WSGI callable: the same Pyramid app, transaction manager, SQLite file, notifier's
subscriber and outbox as a server runs, without HTTP's parsing and socket (waitress and an HTTP
client cost about 1 ms of CPU a write more, and the writer of the bench another process). Every
writer writes the one SQLite file, in the WAL mode the app sets on it: writes wait for each
other on its write lock, as a server's threads would.

Open loop: write ``n`` is due at ``t0 + n / rate``; writer ``k`` takes the writes with
``n % WRITERS == k``, each sent by whichever of its :data:`THREADS` threads is free, whether or
not the earlier writes were answered. A write not sent within :data:`GIVE_UP` of the last one's
due time is not sent at all, so that a rate the app cannot take ends on time. A write's commit
time is when the WSGI call returned: pyramid_tm commits before the response leaves the app.
Times are CLOCK_MONOTONIC's (bench/lag_listeners.py), one clock for every process of the
machine. The parent sends each writer one JSON line a rate on its stdin, and reads one back.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.lag_listeners import clock
from bench.measure import RECORD

#: The writer processes, and the threads of each: four writes at a time, as the demo's
#: waitress serves them. More threads do not write more: each write holds SQLite's write lock
#: about 2 ms, and its waiters back off (bench/README.md, row 7).
WRITERS = 2
THREADS = 2
#: How late after the last write was due a write may still be sent: the rest is not.
GIVE_UP = 1.0
#: The example app's ini file, as its README runs it; the row's settings go over it.
INI = Path(__file__).resolve().parents[1] / "examples" / "articles.ini"


@dataclass
class Writes:
    """One rate's writes: each record's id, when it was due, sent and committed (None: it was
    not sent, or failed), and what went wrong."""

    rate: float
    prefix: str
    ids: list[str]
    due: list[float]
    sent: list[float | None]
    committed: list[float | None]
    errors: list[str] = field(default_factory=list)

    def answered(self) -> list[tuple[str, float]]:
        """Each write answered 201: its record id and commit time."""
        return [(n, at) for n, at in zip(self.ids, self.committed, strict=True) if at is not None]

    def achieved(self) -> float:
        """Writes answered per second, from the first due to the last answered."""
        answered = [at for _, at in self.answered()]
        return len(answered) / (max(answered) - self.due[0]) if answered else 0.0


class Writers:
    """The :data:`WRITERS` writer processes of one database, each with its ``settings`` over the
    ini file's (``{writer}`` in a value: its number); each one's log is ``writer-<k>.log`` in
    ``directory``."""

    def __init__(self, directory: Path, settings: dict[str, str], env: dict[str, str]) -> None:
        self.logs = [directory / f"writer-{k}.log" for k in range(WRITERS)]
        self.processes: list[subprocess.Popen[str]] = []
        try:
            # One at a time: the first creates the app's tables, which the others then find.
            for k, log in enumerate(self.logs):
                mine = {key: value.replace("{writer}", str(k)) for key, value in settings.items()}
                self.processes.append(_start(mine, env, log))
                self._answer(self.processes[-1], "ready")
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def write(self, rate: float, seconds: float, prefix: str) -> Writes:
        """``rate * seconds`` writes of an article (the 1 KB record), open loop, shared by the
        writers (see the module's doc)."""
        count = int(rate * seconds)
        start = clock() + 0.2  # each writer has its command well before the first is due
        ids = [f"{prefix}-{n}" for n in range(count)]
        due = [start + n / rate for n in range(count)]
        writes = Writes(rate, prefix, ids, due, [None] * count, [None] * count)
        command = {
            "rate": rate,
            "seconds": seconds,
            "prefix": prefix,
            "start": start,
            "writers": len(self.processes),
            "threads": THREADS,
        }
        for k, process in enumerate(self.processes):
            assert process.stdin is not None
            process.stdin.write(json.dumps({**command, "share": k}) + "\n")
            process.stdin.flush()
        for k, process in enumerate(self.processes):
            share = self._answer(process, "written")
            writes.sent[k :: len(self.processes)] = share["sent"]
            writes.committed[k :: len(self.processes)] = share["committed"]
            writes.errors += share["errors"]
        return writes

    def output(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs if log.exists())

    def _answer(self, process: subprocess.Popen[str], what: str) -> dict[str, Any]:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"a writer exited with {process.wait()}:\n{self.output()[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        assert answer.pop("answer") == what, answer
        return answer

    def stop(self) -> None:
        """Close each writer's stdin, on which it exits; kill one that has not within 10 s."""
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _start(settings: dict[str, str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.steady", json.dumps(settings)],
            cwd=INI.parents[1],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=output,
            text=True,
        )


# -- in a writer process -----------------------------------------------------------------------


def build_app(overrides: dict[str, str]) -> Any:
    """The example app from its ini file, with ``overrides`` over its settings, as
    ``pserve examples/articles.ini`` builds it (``main``)."""
    from pyramid.paster import get_appsettings

    from examples.articles import main

    return main({}, **{**get_appsettings(str(INI)), **overrides})


def write_share(app: Any, command: dict[str, Any]) -> dict[str, Any]:
    """This writer's share of a rate's writes (``n % writers == share``), each sent when due by
    whichever of its ``threads`` is free: when each was sent and committed, and what failed."""
    from webob import Request

    rate, seconds, prefix, start = (command[k] for k in ("rate", "seconds", "prefix", "start"))
    numbers = range(command["share"], int(rate * seconds), command["writers"])
    sent: list[float | None] = [None] * len(numbers)
    committed: list[float | None] = [None] * len(numbers)
    errors: list[str] = []
    bodies = [
        json.dumps({"id": f"{prefix}-{n}", "title": RECORD["title"], "body": RECORD["body"]})
        for n in numbers
    ]
    turns, lock, last = itertools.count(), threading.Lock(), start + seconds + GIVE_UP

    def next_turn() -> int:
        with lock:
            return next(turns)

    def thread() -> None:
        while (i := next_turn()) < len(numbers) and clock() < last:
            time.sleep(max(0.0, start + numbers[i] / rate - clock()))
            request = Request.blank("/articles", method="POST", body=bodies[i].encode())
            request.content_type = "application/json"
            sent[i] = clock()
            try:
                response = request.get_response(app)
            except Exception as exc:  # an error that no view of the app rendered
                errors.append(f"write {numbers[i]}: {exc!r}")
                continue
            if response.status_int == 201:
                committed[i] = clock()
            else:
                errors.append(f"write {numbers[i]}: {response.status} {response.body[:200]!r}")

    threads = [threading.Thread(target=thread, daemon=True) for _ in range(command["threads"])]
    for each in threads:
        each.start()
    for each in threads:
        each.join()
    return {"sent": sent, "committed": committed, "errors": errors}


def _reply(out: IO[str], what: str, **answer: Any) -> None:
    out.write(json.dumps({"answer": what, **answer}) + "\n")
    out.flush()


def main(argv: list[str]) -> int:
    """``python -m bench.steady SETTINGS``: build the app, then write each rate asked on stdin."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    app = build_app(json.loads(argv[0]))
    out, sys.stdout = sys.stdout, sys.stderr  # stdout is the bench's: nothing else goes there
    _reply(out, "ready")
    for line in sys.stdin:
        _reply(out, "written", **write_share(app, json.loads(line)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
