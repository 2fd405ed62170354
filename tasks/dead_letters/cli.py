"""``notifier-dead-letters``: list, show, replay and purge the messages workers could not handle.

::

    notifier-dead-letters list [--json]         one line per letter, oldest first (or JSON)
    notifier-dead-letters show ID               the whole letter, as JSON
    notifier-dead-letters replay ID [ID ...]    send each letter's message again, then remove it
    notifier-dead-letters purge ID [ID ...]     remove these letters
    notifier-dead-letters purge --all           remove every letter

``python -m tasks.dead_letters`` is the same command. It is configured as a worker is, from
``$CELERY_CONFIG_MODULE`` (default ``celeryconfig``): the letters are in the Redis at
``NOTIFIER_DEAD_LETTERS_URL`` (default: the broker), and ``replay`` knows the listeners of
``NOTIFIER_LISTENERS`` (``--include MODULE`` imports more, like a worker's ``-I``).

``replay`` sends a letter's message to its listener's Celery task, on that listener's queue, so
that only this listener runs again, with all its attempts: the task has the id dispatch gives
it (``<task id>:<listener>``), and the redeliveries counted under that id are forgotten first. A
letter for no listener (a malformed message) goes to dispatch again, which keeps it as a new
dead letter if it still is malformed.

Each command first says on standard error which Redis it reads, and where that URL came from.
``--version`` says the version of notifier.

Exit status: 0 done; 1 Redis or the broker failed; 2 a bad command line, an id that is no dead
letter, or a listener this process does not know (and then nothing was done).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Task
from kombu.exceptions import KombuError
from kombu.utils.url import maybe_sanitize_url

from notifier.errors import MalformedMessage, NotifierError
from notifier.wire.message import decode
from notifier.wire.routing import DEFAULT_QUEUE
from notifier.wire.version import version
from tasks.app import app, registry
from tasks.dead_letters.store import DeadLetter, DeadLetters
from tasks.dispatch.delivery import listener_task_id
from tasks.dispatch.task import dispatch
from tasks.settings import configure, configured

__all__ = ["main", "open_store"]

PROG = "notifier-dead-letters"
_REASON_WIDTH = 100


class _CommandError(Exception):
    """Raised when a command cannot be carried out as asked: exit status 2, nothing done."""


def open_store() -> DeadLetters:
    """The workers' dead letters: in the Redis at ``notifier_dead_letters_url``."""
    return DeadLetters.from_url(app.conf.notifier_dead_letters_url)


def _plural(count: int, noun: str = "dead letter") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _when(letter: DeadLetter) -> str:
    return letter.failed_at_datetime.strftime("%Y-%m-%d %H:%M:%S")


def _summary(reason: str) -> str:
    line = reason.strip().splitlines()[0] if reason.strip() else "(no reason given)"
    return line if len(line) <= _REASON_WIDTH else line[: _REASON_WIDTH - 3] + "..."


def _letters(store: DeadLetters, ids: Sequence[str]) -> list[DeadLetter]:
    """The letters ``ids``, all of them, or an error that names every id that is none."""
    letters = {letter_id: store.get(letter_id) for letter_id in dict.fromkeys(ids)}
    unknown = [letter_id for letter_id, letter in letters.items() if letter is None]
    if unknown:
        raise _CommandError(
            f"no dead letter with id {', '.join(unknown)} (`{PROG} list` shows the ids); "
            "nothing was done"
        )
    return [letter for letter in letters.values() if letter is not None]


def list_letters(args: argparse.Namespace, store: DeadLetters) -> int:
    letters = list(store)
    if args.json:
        print(json.dumps([_whole(letter) for letter in letters], ensure_ascii=False, default=repr))
        return 0
    if not letters:
        print("No dead letters.")
        return 0
    header = ("ID", "FAILED (UTC)", "LISTENER", "REASON")
    rows = [
        (letter.id, _when(letter), letter.listener or "-", _summary(letter.reason))
        for letter in letters
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(3)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[3]]))
    print()
    print(
        f"{_plural(len(letters))}, oldest first. `{PROG} show ID` shows one whole; "
        f"`{PROG} replay ID` sends it again."
    )
    return 0


def show_letter(args: argparse.Namespace, store: DeadLetters) -> int:
    [letter] = _letters(store, [args.id])
    print(json.dumps(_whole(letter), indent=2, ensure_ascii=False, default=repr))
    return 0


def _whole(letter: DeadLetter) -> dict[str, Any]:
    data = letter.as_dict()
    data["failed_at"] = letter.failed_at_datetime.isoformat(timespec="seconds")
    return data


@dataclass(frozen=True)
class _Target:
    """Where a letter's message is sent again: a Celery task, on a queue."""

    task: Task[Any, Any]
    queue: str
    description: str
    task_id: str | None = None


def _load_listeners(modules: Sequence[str]) -> None:
    # As a worker does: the modules of NOTIFIER_LISTENERS (Celery's imports), then the -I ones.
    try:
        app.loader.import_default_modules()
        for module in modules:
            importlib.import_module(module)
    except (ImportError, NotifierError) as exc:
        raise _CommandError(f"the listeners cannot be loaded: {exc}") from None


def _dispatch_queue(letter: DeadLetter) -> str:
    # Where the web side would send it; for a message too broken to say, where it was found.
    message = letter.message
    if isinstance(message, dict):
        resource_name, action = message.get("resource_name"), message.get("action")
        if isinstance(resource_name, str) and isinstance(action, str):
            return configured(app).routing.queue_for(resource_name, action)
    return letter.queue or DEFAULT_QUEUE


def _target(letter: DeadLetter) -> _Target | None:
    if letter.listener is None:
        queue = _dispatch_queue(letter)
        return _Target(
            dispatch,
            queue,
            f"dispatch (queue {queue}): a message for no listener; if it still is malformed, "
            "it comes back as a new dead letter",
        )
    try:
        listener = registry[letter.listener]
    except KeyError:
        return None
    try:
        # The id dispatch gives a listener's task: the logs tie the replay to the event.
        task_id: str | None = listener_task_id(decode(letter.message).task_id, listener.name)
    except MalformedMessage:
        task_id = None
    return _Target(
        listener.task, listener.queue, f"listener {listener.name} (queue {listener.queue})", task_id
    )


def replay_letters(args: argparse.Namespace, store: DeadLetters) -> int:
    letters = _letters(store, args.ids)
    _load_listeners(args.include)
    targets = [(letter, _target(letter)) for letter in letters]
    unknown = [letter for letter, target in targets if target is None]
    if unknown:
        listeners = ", ".join(sorted({str(letter.listener) for letter in unknown}))
        known = ", ".join(sorted(listener.name for listener in registry)) or "none"
        raise _CommandError(
            f"no listener {listeners} here, for dead letter "
            f"{', '.join(letter.id for letter in unknown)}: load its module as the workers do, "
            f"with NOTIFIER_LISTENERS=module or --include module (listeners known: {known}); "
            "nothing was replayed"
        )
    ready = [(letter, target) for letter, target in targets if target is not None]
    # One attempt, bounded: the broker's answer or an error, not a command that hangs.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "socket_connect_timeout": 5,
        "socket_timeout": 10,
    }
    for done, (letter, target) in enumerate(ready):
        if target.task_id is not None:
            # A new message, with all its attempts: the bound on deliveries starts again.
            store.forget_redeliveries(target.task_id)
        try:
            target.task.apply_async(
                args=(letter.message,), queue=target.queue, task_id=target.task_id, retry=False
            )
        except (KombuError, redis.RedisError, OSError) as exc:
            _error(
                f"the broker did not take dead letter {letter.id}: {exc}. It stays in the dead "
                f"letters, with every one after it; {_plural(done)} replayed"
            )
            return 1
        store.remove(letter.id)
        print(f"{letter.id}  sent to {target.description}")
    print(f"Replayed {_plural(len(ready))}: sent, and removed from the dead letters.")
    return 0


def purge_letters(args: argparse.Namespace, store: DeadLetters) -> int:
    if args.all:
        count = store.purge()
        print(
            f"Purged {_plural(count)}; none are left." if count else "There were no dead letters."
        )
        return 0
    letters = _letters(store, args.ids)
    for letter in letters:
        store.remove(letter.id)
    print(f"Purged {_plural(len(letters))}.")
    return 0


def _parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="List, show, replay and purge the dead letters of notifier's workers: "
        "messages a listener failed on for good, and malformed messages.",
        epilog="Configured as a worker is: CELERY_CONFIG_MODULE, CELERY_BROKER_URL, "
        "NOTIFIER_DEAD_LETTERS_URL (default: the broker), NOTIFIER_LISTENERS.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="one line per dead letter, oldest first")
    listing.add_argument(
        "--json", action="store_true", help="a JSON array of the letters, each whole, instead"
    )
    listing.set_defaults(run=list_letters)

    show = commands.add_parser("show", help="one dead letter, whole, as JSON")
    show.add_argument("id", metavar="ID")
    show.set_defaults(run=show_letter)

    replay = commands.add_parser(
        "replay",
        help="send dead letters again to their listener (or to dispatch), then remove them",
    )
    replay.add_argument("ids", nargs="+", metavar="ID")
    replay.add_argument(
        "-I",
        "--include",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module of listeners to import, as with a worker's -I (repeatable)",
    )
    replay.set_defaults(run=replay_letters)

    purge = commands.add_parser("purge", help="remove dead letters: the ones named, or --all")
    purge.add_argument("ids", nargs="*", metavar="ID")
    purge.add_argument("--all", action="store_true", help="remove every dead letter")
    purge.set_defaults(run=purge_letters, check=_check_purge(purge))
    return parser


def _check_purge(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], None]:
    def check(args: argparse.Namespace) -> None:
        if args.all and args.ids:
            parser.error("give dead letter ids or --all, not both")
        if not args.all and not args.ids:
            parser.error("name the dead letters to purge (`list` shows their ids), or --all")

    return check


def _reading() -> str:
    # Which Redis the command reads, and why that one: a command run without the worker's
    # environment would otherwise read Celery's default broker and say nothing of it.
    url = maybe_sanitize_url(app.conf.notifier_dead_letters_url)
    if os.environ.get("NOTIFIER_DEAD_LETTERS_URL"):
        source = "NOTIFIER_DEAD_LETTERS_URL"
    elif os.environ.get("CELERY_BROKER_URL"):
        source = "the broker, CELERY_BROKER_URL"
    else:
        source = "the broker: neither NOTIFIER_DEAD_LETTERS_URL nor CELERY_BROKER_URL is set"
    return f"{PROG}: the dead letters at {url} ({source})"


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run the command ``argv`` (default: the command line); return the exit status.
    ``prog``: the name its usage goes by (``notifier dead-letters``, in the family)."""
    try:
        args = _parser(prog).parse_args(argv)
        if hasattr(args, "check"):
            args.check(args)
    except SystemExit as exc:  # argparse's way to end: --help (0), or a bad command line (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        # As a worker starts: every setting checked, the dead letters' Redis known.
        configure(app, registry)
    except NotifierError as exc:
        _error(str(exc))
        return 2
    print(_reading(), file=sys.stderr)
    store = open_store()
    try:
        status: int = args.run(args, store)
    except _CommandError as exc:
        _error(str(exc))
        return 2
    except redis.RedisError as exc:
        url = maybe_sanitize_url(app.conf.notifier_dead_letters_url)
        _error(f"the dead letters at {url} cannot be read or written: {exc}")
        return 1
    return status
