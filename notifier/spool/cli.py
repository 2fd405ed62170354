"""``notifier-spool``: look into a spool directory, and publish what dead processes left."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kombu.utils.url import maybe_sanitize_url

from notifier.spool.directory import Spool
from notifier.spool.file import SpoolFile
from notifier.wire.version import version

__all__ = ["main"]


def main(argv: list[str] | None = None, *, prog: str = "notifier-spool") -> int:
    """``notifier-spool``: look into a spool directory, and publish what dead processes left.

    ``prog``: the name the command goes by in its messages (``notifier spool``, in the family).
    """
    from notifier.publisher import CeleryPublisher

    parser = argparse.ArgumentParser(
        prog=prog, description="Messages the broker did not take, kept on disk."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the spool files and how many messages each holds")
    listing.add_argument("directory")
    flushing = commands.add_parser(
        "flush", help="publish the files no running process holds, oldest message first"
    )
    flushing.add_argument("directory")
    broker_url = os.environ.get("CELERY_BROKER_URL")
    flushing.add_argument(
        "--broker-url",
        default=broker_url,
        required=broker_url is None,
        help="the broker to publish to (default: $CELERY_BROKER_URL), e.g. redis://localhost:6379/0",
    )
    flushing.add_argument("--name", default="notifier", help="whose files (default: notifier)")
    flushing.add_argument("--timeout", type=float, default=5.0, help="seconds per broker call")
    arguments = parser.parse_args(argv)

    directory = Path(arguments.directory)
    if not directory.is_dir():
        parser.exit(2, f"{prog}: {directory} is not a directory\n")
    if arguments.command == "list":
        paths = sorted(directory.glob("spool-*.sqlite3"))
        for path in paths:
            spool_file = SpoolFile(path)
            held = "free" if spool_file.lock() else "held by a running process"
            spool_file.unlock()
            print(f"{path.name}  {len(spool_file)} messages  {held}")
        print(f"{len(paths)} spool files")
        return 0

    print(
        f"{prog}: publishing to {maybe_sanitize_url(arguments.broker_url)}",
        file=sys.stderr,
    )
    publisher = CeleryPublisher(arguments.broker_url, arguments.timeout)
    spool = Spool(directory, publisher.publish, name=arguments.name)
    try:
        published = spool.flush()
    finally:
        publisher.close()
    left, free = 0, set[Path]()
    for spool_file in spool.files():  # the free files, as flush left them
        left += len(spool_file)
        free.add(spool_file.path)
        spool_file.unlock()
    # A file a running process holds is its own to publish: say which were skipped, and what
    # they hold, rather than report success for what was not done.
    skipped = [
        found
        for found in sorted(directory.glob(f"spool-{arguments.name}-*.sqlite3"))
        if found not in free
    ]
    for found in skipped:
        print(f"skipped {found.name}: held by a running process ({len(SpoolFile(found))} messages)")
    print(f"published {published} messages; {left} left in free spool files")
    return 0 if left == 0 and not skipped else 1
