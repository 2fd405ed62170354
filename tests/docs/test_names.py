"""The files and the names of notifier's code that the docs mention exist, so that the pages
follow the code's renames.

A path of the repository (``tasks/broker/taking.py``, ``docs/outbox.md``, ``./scripts/demo``)
must exist; a dotted name in backquotes that starts with one of notifier's modules
(``notifier.listeners.celery``, ``tasks.Event``) must import, or be an attribute of what does.
``notifier.<setting>`` (``notifier.broker_url``) and the task name ``notifier.dispatch`` are
not modules of notifier, and are left alone.
"""

import importlib
import importlib.util
import re

import pytest

import notifier
from tests.docs.markdown import ROOT, pages, prose

PATH = re.compile(
    r"(?:(?<=[\s`(\[])|^)(?:\./)?((?:notifier|tasks|bench|examples|tests|scripts|docs|\.ci)/[\w/.-]*)",
    re.MULTILINE,
)
DOTTED = re.compile(r"`((?:notifier|tasks)(?:\.\w+)+)[`(]")


def paths(text):
    for match in PATH.finditer(text):
        path = match[1].rstrip(".,:;")
        if path.endswith("/_build") or "/_build/" in path:
            continue  # what ./scripts/docs builds
        yield path


def dotted_names(text):
    for match in DOTTED.finditer(text):
        name = match[1]
        if name.endswith((".py", ".lua", ".md")):
            continue  # a file name (tasks.py), not a module's dotted name
        first, _, _ = name.partition(".")
        second = name.split(".")[1]
        if first == "notifier" and not (
            hasattr(notifier, second) or importlib.util.find_spec(f"notifier.{second}")
        ):
            continue  # a setting (notifier.broker_url) or the task name notifier.dispatch
        yield name


def resolves(name):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


PAGES = pages()
IDS = [str(page.relative_to(ROOT)) for page in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_the_files_a_page_names_exist(page):
    missing = sorted({path for path in paths(prose(page)) if not (ROOT / path).exists()})
    assert missing == [], f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_the_names_a_page_gives_of_the_code_exist(page):
    missing = sorted({name for name in dotted_names(prose(page)) if not resolves(name)})
    assert missing == [], f"{page.relative_to(ROOT)} names what the code lacks: {missing}"


def test_names_are_found():
    text = prose(ROOT / "docs" / "internals.md")
    assert "tasks/broker/taking.py" in set(paths(text))
    assert "notifier.listeners.celery" in set(dotted_names(prose(ROOT / "docs" / "forwarders.md")))
    assert "notifier.broker_url" not in set(dotted_names(prose(ROOT / "docs" / "settings.md")))
