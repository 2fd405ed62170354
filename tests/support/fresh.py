"""Code run in a fresh interpreter, so that what the test process imported does not count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, **environ: str) -> Any:
    """Run ``code`` with ``python -c`` in the repository, without the broker or routes of the
    test's environment (``environ`` over it); return the JSON its last line prints."""
    env = {**os.environ, **environ}
    for name in ("CELERY_BROKER_URL", "NOTIFIER_ROUTES"):
        if name not in environ:
            env.pop(name, None)
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])
