"""A real Kinto 26 server for the integration tests, with notifier plugged in.

``KintoServer`` serves it with waitress in a process of its own, on its memory backends, or on
PostgreSQL (``postgresql_backends(url)``, once ``migrate(directory, url)`` made the database's
schema). The ``includeme`` below is a Kinto plugin for the tests only: ``/__conflict__`` answers
409, which makes Kinto abort a ``/batch`` that calls it, as a real conflict would.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from pyramid.httpexceptions import HTTPConflict
from pyramid.security import NO_PERMISSION_REQUIRED

from tests.support.processes import ROOT, Process, free_port

MEMORY_BACKENDS = """
kinto.storage_backend = kinto.core.storage.memory
kinto.storage_url =
kinto.cache_backend = kinto.core.cache.memory
kinto.cache_url =
kinto.permission_backend = kinto.core.permission.memory
kinto.permission_url =
"""

AUTHENTICATION = """
kinto.userid_hmac_secret = a-secret-for-the-tests-only
multiauth.policies = basicauth
kinto.bucket_create_principals = system.Everyone
"""


def postgresql_backends(url: str) -> str:
    """Kinto's storage and permissions in the PostgreSQL database at ``url``: both survive a
    restart of Kinto (a bucket's permissions too, so that its writers may go on writing)."""
    return f"""
kinto.storage_backend = kinto.core.storage.postgresql
kinto.storage_url = {url}
kinto.cache_backend = kinto.core.cache.memory
kinto.cache_url =
kinto.permission_backend = kinto.core.permission.postgresql
kinto.permission_url = {url}
"""


def migrate(directory: Path, url: str) -> None:
    """``kinto migrate``: create Kinto's schema in the database at ``url`` (once per database).

    With an ini file of the backends only, so that no listener starts for it."""
    ini = directory / "kinto-migrate.ini"
    ini.write_text(f"[app:main]\nuse = egg:kinto\n{postgresql_backends(url)}{AUTHENTICATION}")
    # kinto/__main__.py defines main() but does not call it: `python -m kinto` does nothing.
    kinto = "import sys; from kinto.__main__ import main; sys.exit(main())"
    migration = subprocess.run(
        [sys.executable, "-c", kinto, "migrate", "--ini", str(ini)],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=120,
    )  # fmt: skip
    if migration.returncode != 0:
        raise RuntimeError(f"kinto migrate failed:\n{migration.stdout}{migration.stderr}")


#: The Basic credentials the tests write to Kinto with (any user and password do).
AUTH = "Basic " + base64.b64encode(b"alice:secret").decode()


def kinto_request(method: str, url: str, data: Any = None) -> urllib.request.Request:
    """A request to Kinto with a JSON body (``data``) and the tests' credentials."""
    body = None if data is None else json.dumps(data).encode()
    return urllib.request.Request(
        url,
        data=body,
        method=method,
        headers={"Content-Type": "application/json", "Authorization": AUTH},
    )


def conflict(request: Any) -> Any:
    raise HTTPConflict()


def includeme(config: Any) -> None:
    config.add_route("test_conflict", "/__conflict__")
    config.add_view(
        conflict, route_name="test_conflict", request_method="POST",
        permission=NO_PERMISSION_REQUIRED,
    )  # fmt: skip


class KintoServer(Process):
    """``pserve`` of a Kinto ini file whose [app:main] ends with ``settings``.

    ``backends``: MEMORY_BACKENDS, or ``postgresql_backends(url)``. ``server``: more lines for
    waitress's [server:main] (``threads = 8``). ``port``: to start it again where it was (a
    killed Kinto's restart: the same name gives the same ini file and spool)."""

    def __init__(
        self,
        directory: Path,
        settings: str,
        name: str = "kinto",
        includes: str = "",
        *,
        backends: str = MEMORY_BACKENDS,
        server: str = "",
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.ini = directory / f"{name}.ini"
        self.ini.write_text(
            f"[app:main]\nuse = egg:kinto\n{backends}{AUTHENTICATION}"
            f"kinto.includes = tests.integration.kinto_app {includes}\n{settings}\n\n"
            f"[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:{self.port}\n{server}"
        )
        argv = [sys.executable, "-m", "pyramid.scripts.pserve", str(self.ini)]
        env = {**os.environ, "NOTIFIER_SPOOL_DIR": str(directory / f"{name}-spool")}
        super().__init__(name, argv, directory / f"{name}.log", env)
        self.wait_until_ready(self.answers, 60, f"{name} answering on port {self.port}")

    def answers(self) -> bool:
        self.check_alive()
        try:
            with urllib.request.urlopen(f"{self.url}/", timeout=1):
                return True
        except OSError:
            return False
