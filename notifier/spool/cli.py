"""``notifier-spool``: look into a spool directory, and publish what dead processes left."""

from __future__ import annotations

import argparse
from pathlib import Path

from notifier.spool.directory import Spool
from notifier.spool.file import SpoolFile

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """``notifier-spool``: look into a spool directory, and publish what dead processes left."""
    from notifier.publisher import CeleryPublisher

    parser = argparse.ArgumentParser(
        prog="notifier-spool", description="Messages the broker did not take, kept on disk."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the spool files and how many messages each holds")
    listing.add_argument("directory")
    flushing = commands.add_parser(
        "flush", help="publish the files no running process holds, oldest message first"
    )
    flushing.add_argument("directory")
    flushing.add_argument("--broker-url", required=True, help="e.g. redis://localhost:6379/0")
    flushing.add_argument("--name", default="notifier", help="whose files (default: notifier)")
    flushing.add_argument("--timeout", type=float, default=5.0, help="seconds per broker call")
    arguments = parser.parse_args(argv)

    directory = Path(arguments.directory)
    if not directory.is_dir():
        parser.exit(2, f"notifier-spool: {directory} is not a directory\n")
    if arguments.command == "list":
        paths = sorted(directory.glob("spool-*.sqlite3"))
        for path in paths:
            spool_file = SpoolFile(path)
            held = "free" if spool_file.lock() else "held by a running process"
            spool_file.unlock()
            print(f"{path.name}  {len(spool_file)} messages  {held}")
        print(f"{len(paths)} spool files")
        return 0

    publisher = CeleryPublisher(arguments.broker_url, arguments.timeout)
    spool = Spool(directory, publisher.publish, name=arguments.name)
    try:
        published = spool.flush()
    finally:
        publisher.close()
    left = 0
    for spool_file in spool.files():  # the free files, as flush left them
        left += len(spool_file)
        spool_file.unlock()
    print(f"published {published} messages; {left} left in free spool files")
    return 0 if left == 0 else 1
