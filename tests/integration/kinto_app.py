"""A real Kinto 26 server (memory backend) for the integration tests, with notifier plugged in.

``KintoServer`` serves it with waitress in a process of its own. The ``includeme`` below is a
Kinto plugin for the tests only: ``/__conflict__`` answers 409, which makes Kinto abort a
``/batch`` that calls it, as a real conflict would.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from pyramid.httpexceptions import HTTPConflict
from pyramid.security import NO_PERMISSION_REQUIRED

from examples.processes import Process, free_port

MEMORY_BACKENDS = """
kinto.storage_backend = kinto.core.storage.memory
kinto.storage_url =
kinto.cache_backend = kinto.core.cache.memory
kinto.cache_url =
kinto.permission_backend = kinto.core.permission.memory
kinto.permission_url =
kinto.userid_hmac_secret = a-secret-for-the-tests-only
multiauth.policies = basicauth
kinto.bucket_create_principals = system.Everyone
"""


def conflict(request: Any) -> Any:
    raise HTTPConflict()


def includeme(config: Any) -> None:
    config.add_route("test_conflict", "/__conflict__")
    config.add_view(
        conflict, route_name="test_conflict", request_method="POST",
        permission=NO_PERMISSION_REQUIRED,
    )  # fmt: skip


class KintoServer(Process):
    """``pserve`` of a Kinto ini file whose [app:main] ends with ``settings``."""

    def __init__(
        self, directory: Path, settings: str, name: str = "kinto", includes: str = ""
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        ini = directory / f"{name}.ini"
        ini.write_text(
            f"[app:main]\nuse = egg:kinto\n{MEMORY_BACKENDS}"
            f"kinto.includes = tests.integration.kinto_app {includes}\n{settings}\n\n"
            f"[server:main]\nuse = egg:waitress#main\nlisten = 127.0.0.1:{self.port}\n"
        )
        argv = [sys.executable, "-m", "pyramid.scripts.pserve", str(ini)]
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
