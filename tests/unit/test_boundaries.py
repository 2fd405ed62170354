"""Dependencies go one way: the worker side never imports Pyramid, the web side never the worker;
and Celery's and kombu's internals are touched only behind their fence.

The import checks run in a fresh interpreter, so that what this test process imported does not
count; the others read the source (every module of notifier/ and tasks/, lazy imports too).
"""

import ast
import importlib
from pathlib import Path

import pytest

from tests.support.fresh import run_python

REPO = Path(__file__).resolve().parents[2]

#: Where Celery's and kombu's internals may be used: the worker's broker package, and the web
#: side's writer of Celery's task protocol.
FENCED = ("tasks/broker/", "notifier/wire/protocol.py")
#: The internals known to be relied on (each explained where tasks/broker/ uses it): no module
#: outside the fence names them, as an attribute or a string (getattr).
INTERNALS = frozenset(
    {
        # kombu's Redis channel and QoS (tasks/broker/consuming.py, consumer.py, visibility.py)
        "_delivered",
        "_brpop_start",
        "_brpop_read",
        "_in_poll",
        "_brpop_sent_at",
        "_queue_cycle",
        "_q_for_pri",
        "_flush_brpop_reauth",
        "_remove_from_indices",
        "_init_params",
        "set_response_callback",
        "response_callbacks",
        "restore_by_tag",
        "unacked_key",
        "unacked_index_key",
    }
)
#: What the worker side may import of the web side's package: what both sides share.
WORKER_MAY_IMPORT = ("notifier.wire", "notifier.errors")


def modules(*packages):
    """The path (relative to the repository) and the syntax tree of every module of
    ``packages``."""
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            yield relative, ast.parse(path.read_text(), filename=relative)


def imported(relative, tree):
    """``(module, name)`` for each import of a module: ``name`` is None for ``import module``,
    else each name of ``from module import name``."""
    package = relative.removesuffix(".py").replace("/", ".").rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from its package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            for alias in node.names:
                yield module, alias.name


def private(part):
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def outside_the_fence(relative):
    return not relative.startswith(FENCED)


def private_imports(relative, tree):
    """The imports of a private Celery or kombu module or name in one module."""
    return [
        f"{module}" + (f" import {name}" if name else "")
        for module, name in imported(relative, tree)
        if module.split(".")[0] in ("celery", "kombu")
        and (any(private(part) for part in module.split(".")) or (name and private(name)))
    ]


def test_no_module_outside_the_fence_imports_a_private_celery_or_kombu_name():
    found = [
        f"{relative}: {found}"
        for relative, tree in modules("notifier", "tasks")
        if outside_the_fence(relative)
        for found in private_imports(relative, tree)
    ]

    assert found == []


def test_no_module_outside_the_fence_touches_a_known_internal():
    found = [
        f"{relative}:{node.lineno}: {name}"
        for relative, tree in modules("notifier", "tasks")
        if outside_the_fence(relative)
        for node in ast.walk(tree)
        for name in [
            node.attr
            if isinstance(node, ast.Attribute)
            else node.value
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            else None
        ]
        if name in INTERNALS
    ]

    assert found == []


def test_no_module_outside_the_fence_reads_another_object_s_private_attribute():
    # Whatever an object's private attribute is (one of Celery's or kombu's, or ours), only the
    # object itself reads it: an internal not in INTERNALS is caught here too.
    found = [
        f"{relative}:{node.lineno}: {ast.unparse(node)}"
        for relative, tree in modules("notifier", "tasks")
        if outside_the_fence(relative)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]

    assert found == []


def test_only_the_fence_replaces_a_kombu_transport_s_channel_class():
    found = [
        f"{relative}:{node.lineno}"
        for relative, tree in modules("notifier", "tasks")
        if outside_the_fence(relative)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and node.attr in ("Channel", "QoS")
    ]

    assert found == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from celery._state import _task_stack", ["celery._state import _task_stack"]),
        ("from celery import _state", ["celery import _state"]),
        ("import kombu.transport._private", ["kombu.transport._private"]),
        ("from kombu.utils.url import _parse_url", ["kombu.utils.url import _parse_url"]),
        ("from celery import __version__, Celery", []),
    ],
)
def test_the_private_import_check_finds_what_it_looks_for(source, expected):
    # A check that finds nothing must be able to find.
    assert private_imports("tasks/x.py", ast.parse(source)) == expected


def test_the_web_side_imports_nothing_of_the_worker_side():
    found = [
        f"{relative}: {module}" + (f" import {name}" if name else "")
        for relative, tree in modules("notifier")
        for module, name in imported(relative, tree)
        if module.split(".")[0] == "tasks"
    ]

    assert found == []


def test_the_worker_side_imports_nothing_of_pyramid():
    found = [
        f"{relative}: {module}"
        for relative, tree in modules("tasks")
        for module, _ in imported(relative, tree)
        if module.split(".")[0] in ("pyramid", "webob", "kinto", "transaction", "pyramid_tm")
    ]

    assert found == []


def test_the_worker_side_imports_of_notifier_only_what_both_sides_share():
    found = [
        f"{relative}: {module}" + (f" import {name}" if name else "")
        for relative, tree in modules("tasks")
        for module, name in imported(relative, tree)
        if module.split(".")[0] == "notifier"
        for target in [f"{module}.{name}" if module == "notifier" and name else module]
        if not any(
            target == allowed or target.startswith(f"{allowed}.") for allowed in WORKER_MAY_IMPORT
        )
    ]

    assert found == []


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
    # users can reach its names, and monkeypatch.setattr("tasks.dispatch.fan_out.fan_out", ...)
    # works.
    import tasks.dispatch.fan_out as fan_out_module
    import tasks.listeners.registry as registry_module

    assert registry_module.Registry is importlib.import_module("tasks.listeners.registry").Registry
    assert fan_out_module.fan_out is importlib.import_module("tasks.dispatch.fan_out").fan_out
