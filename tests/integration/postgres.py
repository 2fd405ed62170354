"""A PostgreSQL server of the tests' own: ``initdb`` into a fresh directory, then ``postgres``.

The binaries are the machine's (``postgres`` on the PATH, else the newest
``/usr/lib/postgresql/*/bin``), else those the PyPI package ``pgserver`` ships
(``pgserver/pginstall/bin``, of the test dependency group).

``initdb`` and ``postgres`` refuse to run as root. Run as root (as in containers and on CI), the
server runs as the unprivileged system user ``nobody`` (its uid and primary group, no
supplementary groups; no user is created); run as anyone else, as that user. Its data directory
and socket are in a directory of its own under the system's temporary directory (``nobody``
cannot reach pytest's, which is private to root), removed by :meth:`PostgresServer.stop`; its
log is in ``directory``.

The server listens on a free port of 127.0.0.1 only, trusts every local connection (user
``postgres``, no password) and does not fsync: a test's data does not have to survive a crash
of the machine, only of the processes the test kills.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.processes import Process, free_port

USER = "postgres"  # the database superuser that initdb creates
UNPRIVILEGED = "nobody"  # the system user the server runs as when the tests run as root


def postgres_binaries() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: the machine's, else pgserver's."""
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return Path(os.path.realpath(on_path)).parent
    installed = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if installed:
        return Path(installed[-1]).parent
    # Found, not imported: importing pgserver starts nothing but warns (platformdirs).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    bundled = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    return bundled if (bundled / "postgres").exists() else None


def _as_unprivileged() -> dict[str, Any]:
    """Popen arguments that run the child as ``nobody`` when we are root, else nothing."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(UNPRIVILEGED)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


class PostgresServer(Process):
    """``postgres`` as a child process, with a database ``database`` created, at ``url``."""

    stop_signal = signal.SIGINT  # a fast shutdown: without waiting for clients to disconnect

    def __init__(
        self, directory: Path, database: str = "notifier", binaries: Path | None = None
    ) -> None:
        binaries = binaries or postgres_binaries()
        if binaries is None:
            raise FileNotFoundError("no PostgreSQL: install it, or the pgserver package")
        self.port = free_port()
        self._popen_user = _as_unprivileged()
        # A short path of its own: a Unix socket's path is limited to about 100 characters.
        self.home = Path(tempfile.mkdtemp(prefix="notifier-postgres-"))
        if self._popen_user:
            os.chown(self.home, self._popen_user["user"], self._popen_user["group"])
        self.data = self.home / "data"
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        initdb = subprocess.run(
            [
                str(binaries / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
                "--no-locale", "--encoding=UTF8", "--no-sync",
            ],
            env=env, capture_output=True, text=True, check=False, **self._popen_user,
        )  # fmt: skip
        if initdb.returncode != 0:
            shutil.rmtree(self.home, ignore_errors=True)
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        argv = [
            str(binaries / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.home), "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=300", "-c", "shared_buffers=32MB",
            # mmap: containers often have a /dev/shm too small for parallel queries.
            "-c", "dynamic_shared_memory_type=mmap",
        ]  # fmt: skip
        super().__init__(
            "postgres", argv, directory / f"postgres-{self.port}.log", env, **self._popen_user
        )
        self.wait_until_ready(self.answers, 30, f"postgres on port {self.port} answering")
        self.url = self.create_database(database)

    def url_of(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> Any:
        """A psycopg2 connection to ``database`` (autocommit)."""
        import psycopg2

        connection = psycopg2.connect(self.url_of(database), connect_timeout=2)
        connection.autocommit = True
        return connection

    def answers(self) -> bool:
        self.check_alive()
        import psycopg2

        try:
            self.connect().close()
        except psycopg2.OperationalError:
            return False
        return True

    def create_database(self, name: str) -> str:
        """Create the database ``name`` and return its URL."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url_of(name)

    def stop(self, timeout: float = 10) -> None:
        """A fast shutdown (:attr:`stop_signal`), then remove the data directory."""
        super().stop(timeout)
        shutil.rmtree(self.home, ignore_errors=True)
