"""``notifier status``: the whole pipeline at a glance, and an exit status a probe can use.

It reads what a worker reads (``$CELERY_CONFIG_MODULE``, ``CELERY_BROKER_URL``,
``NOTIFIER_ROUTES``, ``NOTIFIER_DEAD_LETTERS_URL``: :mod:`tasks.status`, loaded by name), and
what the web side left: the spool directory (``--spool-dir``, else ``$NOTIFIER_SPOOL_DIR``) and
the outbox table (``--outbox-url``). It first says on standard error which Redis it reads, and
where each URL came from.

Exit status: 0 healthy; 1 something needs a person (the ``problems``, see docs/cli.md); 2 a bad
command line or setting, or a Redis that does not answer (one line that names its URL).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from notifier.errors import NotifierError
from notifier.spool.file import SpoolFile
from notifier.wire.message import Message
from notifier.wire.version import version

__all__ = ["main", "outbox_backlog", "spool_backlog"]

#: The module of the worker side's part, imported when the command runs (notifier.cli's doc).
WORKER_SIDE = "tasks.status"


def _committed_at(text: str | None) -> float | None:
    try:
        value = json.loads(text).get("committed_at") if text else None
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _oldest_spooled(path: Path) -> float | None:
    # The first row of a spool file is its oldest message (notifier/spool/file.py); read-only.
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            row = db.execute("SELECT message FROM spool ORDER BY id LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else _committed_at(row[0])


def spool_backlog(directory: Path, now: float, max_age: float) -> tuple[dict[str, Any], list[str]]:
    """What the spool files in ``directory`` hold, and what of it needs a person: a message
    older than ``max_age`` seconds, or one of unknown age in a file no running process holds."""
    files: list[dict[str, Any]] = []
    problems = []
    for path in sorted(directory.glob("spool-*.sqlite3")):
        spool_file = SpoolFile(path)
        held = not spool_file.lock()
        spool_file.unlock()
        messages = len(spool_file)
        committed_at = _oldest_spooled(path) if messages else None
        age = None if committed_at is None else round(max(0.0, now - committed_at), 3)
        files.append({"name": path.name, "messages": messages, "held": held, "oldest_age": age})
        if messages and age is not None and age > max_age:
            problems.append(
                f"spool file {path.name}: its oldest message was committed {age:.1f} s ago "
                f"(more than {max_age:g} s)"
            )
        elif messages and age is None and not held:
            problems.append(
                f"spool file {path.name}: {messages} messages no running process holds: "
                f"`notifier spool flush {directory}` publishes them"
            )
    ages = [entry["oldest_age"] for entry in files if entry["oldest_age"] is not None]
    return {
        "directory": str(directory),
        "files": files,
        "messages": sum(entry["messages"] for entry in files),
        "oldest_age": max(ages) if ages else None,
    }, problems


def _refuse(message: Message, queue: str) -> None:
    raise RuntimeError("status only reads the outbox")


def outbox_backlog(url: str, max_age: float) -> tuple[dict[str, Any], list[str]]:
    """How many rows the outbox table at ``url`` holds and the oldest's age, and whether it is
    older than ``max_age`` seconds (its relays did not publish it)."""
    import sqlalchemy as sa

    from notifier.outbox.relay import Outbox
    from notifier.outbox.table import TABLE, engine_for, table_exists

    try:
        shown = sa.make_url(url).render_as_string()
    except sa.exc.ArgumentError:
        raise NotifierError(f"--outbox-url {url!r} is no database URL") from None
    engine = engine_for(url)
    try:
        if not table_exists(engine):
            data = {"url": shown, "messages": None, "oldest_age": None}
            return data, [f"no {TABLE} table in {shown}: `notifier outbox create --url ...`"]
        count, oldest = Outbox(engine, _refuse).waiting()
    except sa.exc.SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0]
        raise NotifierError(f"the outbox at {shown} cannot be read: {reason}") from None
    finally:
        engine.dispose()
    age = None if oldest is None else round(oldest, 3)
    problems = []
    if age is not None and age > max_age:
        problems.append(
            f"outbox: its oldest message was written {age:.1f} s ago (more than {max_age:g} s): "
            "is a relay running?"
        )
    return {"url": shown, "messages": count, "oldest_age": age}, problems


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The queues and their lag, the workers and their listeners, the spool's "
        "and the outbox's backlog, and the dead letters.",
        epilog="Exit status: 0 healthy; 1 something needs a person (each named); 2 a bad "
        "command line or setting, or a Redis that does not answer.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of text")
    parser.add_argument(
        "--max-age",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a message waiting longer (in a queue, the spool or the outbox) needs a person (60)",
    )
    parser.add_argument(
        "--spool-dir",
        default=os.environ.get("NOTIFIER_SPOOL_DIR"),
        metavar="DIRECTORY",
        help="the web processes' spool directory (default: $NOTIFIER_SPOOL_DIR; none: not read)",
    )
    parser.add_argument(
        "--outbox-url",
        metavar="URL",
        help="the outbox's database, e.g. postgresql://user@host/kinto (none: not read)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how long to wait for the workers' answers (1)",
    )
    parser.add_argument(
        "-I",
        "--include",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module of listeners whose queues to show too, as with a worker's -I",
    )
    return parser


def _age(age: float | None) -> str:
    return "unknown" if age is None else f"{age:.1f} s"


def render(status: dict[str, Any]) -> str:
    """``status`` as text, one section per part."""
    lines = [f"notifier {status['version']}: {'healthy' if status['healthy'] else 'NOT HEALTHY'}"]
    lines += ["", f"queues (broker {status['broker']}; lag {_age(status['lag'])}):"]
    for queue in status["queues"]:
        oldest = f", oldest {_age(queue['oldest_age'])}" if queue["depth"] else ""
        takers = ", ".join(queue["consumers"]) or "no live worker"
        lines.append(f"  {queue['name']}: {queue['depth']} messages{oldest}; taken by {takers}")
    lines += ["", "workers:"]
    for worker in status["workers"]:
        state = "answers" if worker["answered"] else "does not answer the ping"
        listeners = ", ".join(worker["listeners"]) or "none"
        lines.append(f"  {worker['hostname']} ({state}): listeners {listeners}")
    if not status["workers"]:
        lines.append("  none")
    letters = status["dead_letters"]
    lines += ["", f"dead letters: {letters['total']}"]
    for entry in letters["by_listener"]:
        lines.append(f"  {entry['listener'] or 'malformed messages'}: {entry['count']}")
    for name in ("spool", "outbox"):
        part = status[name]
        if part is None:
            lines += ["", f"{name}: not read (--{name}-{'dir' if name == 'spool' else 'url'})"]
        else:
            lines += ["", f"{name}: {part['messages']} messages, oldest {_age(part['oldest_age'])}"]
    for title in ("notes", "problems"):
        if status[title]:
            lines += ["", f"{title}:", *(f"  - {line}" for line in status[title])]
    return "\n".join(lines)


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "notifier status",
    clock: Callable[[], float] = time.time,
) -> int:
    """Run ``notifier status`` with ``argv``; return the exit status (see the module's doc)."""
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exc:  # --help (0), or a bad command line (2)
        return exc.code if isinstance(exc.code, int) else 2
    now = clock()
    worker_side = importlib.import_module(WORKER_SIDE)
    try:
        status: dict[str, Any] = worker_side.report(
            now, args.max_age, include=args.include, ping_timeout=args.timeout
        )
    except worker_side.Unreachable as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except NotifierError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for line in status.pop("sources"):
        print(f"{prog}: {line}", file=sys.stderr)
    problems: list[str] = status.pop("problems")
    status["spool"] = status["outbox"] = None
    if args.spool_dir:
        directory = Path(args.spool_dir)
        if directory.is_dir():
            status["spool"], found = spool_backlog(directory, now, args.max_age)
            problems += found
        else:
            status["notes"].append(f"no spool directory {directory}: nothing spooled there")
    if args.outbox_url:
        try:
            status["outbox"], found = outbox_backlog(args.outbox_url, args.max_age)
        except (ImportError, NotifierError) as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        problems += found
    status = {
        "version": version(),
        "checked_at": now,
        "healthy": not problems,
        "max_age": args.max_age,
        **status,
        "problems": problems,
    }
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0 if not problems else 1
