"""The processes of a deployment as the tests drive them: examples/processes.py's, plus what only
a test does to a process.

A test hangs a broker (SIGSTOP, then SIGCONT), kills a worker and its pool at once (SIGKILL, as
a lost machine would), runs the operator's ``notifier-dead-letters``, and starts its processes
from the repository's root, whatever the directory pytest runs in, so that ``-A tasks`` and
``tests.integration.*`` modules import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from examples import processes as demo
from examples.processes import free_port, redis_server_binary, wait_until

__all__ = [
    "ROOT",
    "Process",
    "RedisServer",
    "CeleryWorker",
    "WebApp",
    "free_port",
    "redis_server_binary",
    "wait_until",
    "dead_letters_command",
]

#: The repository's root: where every process of the tests runs.
ROOT = Path(__file__).resolve().parents[2]


class Process(demo.Process):
    """A child process that a test may signal, hang or kill, run from :data:`ROOT`."""

    def __init__(
        self, name: str, argv: list[str], log: Path, env: Mapping[str, str], **popen: Any
    ) -> None:
        """``popen``: more arguments for :class:`subprocess.Popen` (``user=`` and ``group=``
        for a server that refuses to run as root, as PostgreSQL does)."""
        super().__init__(name, argv, log, env, cwd=ROOT, **popen)

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 10) -> None:
        self.signal(signal.SIGCONT)  # a stopped (hung) process cannot act on its stop signal
        super().stop(timeout)

    def kill(self) -> None:
        """SIGKILL the process and its children at once, as a lost machine would (needs
        psutil, of the test dependency group)."""
        import psutil

        process = psutil.Process(self.pid)
        for child in process.children(recursive=True):
            child.send_signal(signal.SIGKILL)
        process.send_signal(signal.SIGKILL)
        self.popen.wait()


class RedisServer(demo.RedisServer, Process):
    """The demo's redis-server, that a test may hang or kill."""


class CeleryWorker(demo.CeleryWorker, Process):
    """The demo's celery worker, that a test may kill, with more listener modules if asked."""

    def __init__(
        self,
        directory: Path,
        env: Mapping[str, str],
        *,
        include: str | None = None,
        options: Sequence[str] = (),
        **worker: Any,
    ) -> None:
        """``include``: more listener modules, as an operator would add them (``-I``)."""
        more = ["-I", include] if include else []
        super().__init__(directory, env, options=[*more, *options], **worker)


class WebApp(demo.WebApp, Process):
    """The example app, that a test may kill."""


def dead_letters_command(
    env: Mapping[str, str], *argv: str, script: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``notifier-dead-letters`` (the console script, else ``python -m tasks.dead_letters``)
    as an operator would, with ``env`` over ours, and wait until it ends."""
    program = (
        [str(Path(sys.executable).parent / "notifier-dead-letters")]
        if script
        else [sys.executable, "-m", "tasks.dead_letters"]
    )
    return subprocess.run(
        [*program, *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
