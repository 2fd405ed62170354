"""``notifier``: one command for both sides' tools.

::

    notifier spool ...          the spool directory (notifier.spool.cli; also notifier-spool)
    notifier outbox ...         the outbox table (notifier.outbox.cli; also notifier-outbox)
    notifier dead-letters ...   the dead letters (tasks.dead_letters.cli; also
                                notifier-dead-letters)
    notifier status [--json]    the whole pipeline at a glance (notifier.cli.status)
    notifier --version

Each subcommand is the module's own command, given the rest of the command line, with its
options and exit status unchanged. The subcommands are named by their dotted path and imported
only when one runs, as entry points are: this is the one module of ``notifier/`` that reaches
the worker side, and it does so by name, the way the web side sends tasks, so that neither a web
process nor ``notifier spool`` ever imports ``tasks`` (tests/unit/test_cli_family.py checks it).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from notifier.wire.version import version

__all__ = ["COMMANDS", "main"]

PROG = "notifier"

#: Each subcommand: the ``module:function`` that runs it (``function(argv, prog=...)`` returns
#: the exit status), and what it is for.
COMMANDS: dict[str, tuple[str, str]] = {
    "spool": ("notifier.spool.cli:main", "messages the broker did not take, kept on disk"),
    "outbox": ("notifier.outbox.cli:main", "the transactional outbox: create, status, relay"),
    "dead-letters": (
        "tasks.dead_letters.cli:main",
        "list, show, replay and purge what the workers could not handle",
    ),
    "status": ("notifier.cli.status:main", "queues, workers, backlogs and dead letters"),
}

Command = Callable[..., int]


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} [--version] [-h] COMMAND [ARGUMENTS ...]",
        "",
        "The tools of notifier: the web side's spool and outbox, the workers' dead letters, "
        "and the status of the whole.",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()),
        "",
        f"`{PROG} COMMAND --help` says more of each.",
    ]
    return "\n".join(lines)


def resolve(name: str) -> Command:
    """The function that runs the subcommand ``name``, imported now."""
    module, _, function = COMMANDS[name][0].partition(":")
    command: Command = getattr(importlib.import_module(module), function)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``notifier`` with ``argv`` (default: the command line); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"{PROG} {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"{_usage()}\n\n{PROG}: error: no command {name!r}", file=sys.stderr)
        return 2
    return resolve(name)(rest, prog=f"{PROG} {name}")
