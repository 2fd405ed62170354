"""``notifier-outbox``: create the outbox table, see what it holds, run a standalone relay."""

from __future__ import annotations

import argparse
import os
import time

import sqlalchemy as sa

from notifier.errors import ConfigurationError
from notifier.outbox.relay import Outbox
from notifier.outbox.table import TABLE, create_table, engine_for, table_exists
from notifier.wire.message import Message
from notifier.wire.version import version

__all__ = ["main"]


def main(argv: list[str] | None = None, *, prog: str = "notifier-outbox") -> int:
    """``notifier-outbox``: create the table, see what it holds, run a standalone relay.

    ``prog``: the name the command goes by in its messages (``notifier outbox``, in the family).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The transactional outbox: messages committed with the data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("create", "create the outbox table (nothing if it is there)"),
        ("status", "how many messages the outbox holds, and the oldest one's age"),
        ("relay", "publish what web processes left in the outbox, as their relay threads do"),
    ]:
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--url", required=True, help="the database, e.g. postgresql://user@host/kinto"
        )
    relaying = commands.choices["relay"]
    relaying.add_argument(
        "--broker-url",
        default=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"),
        help="default: $CELERY_BROKER_URL, else redis://localhost:6379/0",
    )
    relaying.add_argument(
        "--relay-after",
        type=float,
        default=10.0,
        help="seconds after which a message its process did not publish is relayed (10)",
    )
    relaying.add_argument("--timeout", type=float, default=5.0, help="seconds per broker call")
    relaying.add_argument("--once", action="store_true", help="one pass, then exit")
    arguments = parser.parse_args(argv)

    if arguments.command == "create":
        try:
            create_table(arguments.url)
        except ConfigurationError as exc:
            parser.exit(2, f"{prog}: {exc}\n")
        print(f"{TABLE}: ready in {sa.make_url(arguments.url).render_as_string()}")
        return 0
    engine = engine_for(arguments.url)
    if not table_exists(engine):
        parser.exit(2, f"{prog}: no {TABLE} table there: run {prog} create\n")
    if arguments.command == "status":
        outbox = Outbox(engine, _refuse)
        count, oldest = outbox.waiting()
        age = "" if oldest is None else f", the oldest {oldest:.1f} s old"
        print(f"{count} messages in {TABLE}{age}")
        return 0

    from notifier.publisher import CeleryPublisher

    publisher = CeleryPublisher(arguments.broker_url, arguments.timeout)
    outbox = Outbox(engine, publisher.publish, relay_after=arguments.relay_after)
    try:
        while True:
            published = outbox.relay()
            if published:
                print(f"published {published} messages", flush=True)
            if arguments.once:
                due, _ = outbox.waiting(older_than=arguments.relay_after)
                print(f"{due} messages older than {arguments.relay_after:g} s left in {TABLE}")
                return 0 if due == 0 else 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        publisher.close()
        engine.dispose()


def _refuse(message: Message, queue: str) -> None:
    raise RuntimeError("this outbox only reads")
