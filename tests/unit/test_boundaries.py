"""Dependencies go one way: the worker side never imports Pyramid, the web side never the worker.

Each check runs in a fresh interpreter, so that what this test process imported does not count.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code, **environ):
    env = {**os.environ, **environ}
    for name in ("CELERY_BROKER_URL", "NOTIFIER_ROUTES"):
        env.pop(name, None)
    completed = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def imported_packages(modules):
    return sorted({name.split(".")[0] for name in modules})


def test_importing_the_worker_side_imports_no_pyramid():
    modules = run_python(
        "import sys, json\n"
        "import tasks\n"
        "from tasks import app, listener, SearchIndex\n"
        "from tasks.app import registry\n"
        "from tasks.dispatch.task import dispatch\n"
        "print(json.dumps(sorted(sys.modules)))\n",
        NOTIFIER_SEARCH_RESOURCES="article",
    )

    assert "tasks" in modules
    assert "pyramid" not in imported_packages(modules)
    assert "webob" not in imported_packages(modules)


def test_the_worker_side_works_where_pyramid_is_not_installed():
    result = run_python(
        "import sys, json\n"
        "sys.modules['pyramid'] = None  # what an ImportError looks like to an import\n"
        "from tasks import Registry, listener\n"
        "from tasks.app import registry\n"
        "@listener('article', name='boundary.check')\n"
        "def check(event):\n"
        "    return event.resource_name\n"
        "print(json.dumps(sorted(listener.name for listener in registry)))\n",
        NOTIFIER_SEARCH_RESOURCES="",
    )

    assert result == ["boundary.check"]


def test_the_web_side_never_imports_the_worker_side():
    modules = run_python(
        "import sys, json\n"
        "import notifier\n"
        "from notifier import errors, events, publisher, request, settings\n"
        "from notifier.wire import message, persistence, routing\n"
        "from notifier import subscriber\n"
        "from pyramid.config import Configurator\n"
        "with Configurator(settings={'notifier.broker_url': 'memory://'}) as config:\n"
        "    config.include('notifier')\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )

    assert "notifier.subscriber" in modules
    assert "tasks" not in imported_packages(modules)


def test_worker_modules_can_be_imported_as_modules():
    # As for any package: `import tasks.listeners.registry as module` gives the module, so that
    # users can reach its names, and monkeypatch.setattr("tasks.dispatch.task.registry", ...) works.
    import tasks.dispatch.task as dispatch_module
    import tasks.listeners.registry as registry_module

    assert registry_module.Registry is importlib.import_module("tasks.listeners.registry").Registry
    assert dispatch_module.fan_out is importlib.import_module("tasks.dispatch.task").fan_out
