"""The examples of the README and of the docs run, so that none can go stale.

Each page's ```python blocks run in order, in one process of their own (tests/docs/
run_examples.py); every other block says what it is in its fence (```ini, ```console...).
How and why: docs/testing.md.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.markdown import ROOT, blocks, pages

RUNNER = Path(__file__).with_name("run_examples.py")

#: What a fenced block may be, besides Python to run.
LANGUAGES = {"python", "ini", "sh", "console", "json", "text", "{toctree}", "{include}"}

WITH_EXAMPLES = [page for page in pages() if any(b.language == "python" for b in blocks(page))]


def run(page, tmp_path):
    """Run the page's python blocks as tests/docs/run_examples.py does; its output."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NOTIFIER_", "CELERY_", "KINTO_"))
    }
    env["CELERY_BROKER_URL"] = "memory://"
    return subprocess.run(
        [sys.executable, str(RUNNER), str(page)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("page", WITH_EXAMPLES, ids=lambda page: str(page.relative_to(ROOT)))
def test_the_python_examples_of_a_page_run(page, tmp_path):
    result = run(page, tmp_path)
    assert result.returncode == 0, f"an example of {page.relative_to(ROOT)} fails:\n{result.stderr}"


def test_the_readme_and_the_docs_have_examples_to_run():
    names = {str(page.relative_to(ROOT)) for page in WITH_EXAMPLES}
    assert {"README.md", "docs/listeners.md", "docs/web.md"} <= names


@pytest.mark.parametrize("page", pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_block_says_what_it_is(page):
    unknown = [
        f"{block.where()}: {block.language or 'no language'}"
        for block in blocks(page)
        if block.language not in LANGUAGES
    ]
    assert unknown == [], f"fences without a known language: {unknown} (known: {LANGUAGES})"


def test_a_broken_example_fails(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text(
        "# A page\n\n```python\nfrom tasks import listener\n```\n\n"
        '```python\n@listener("article", actions=("create", "frobnicate"))\n'
        "def index_article(event): ...\n```\n"
    )
    result = run(page, tmp_path)
    assert result.returncode != 0
    assert f'File "{page}", line 8' in result.stderr
    assert "ListenerError" in result.stderr


def test_an_example_cannot_reach_the_network(tmp_path):
    page = tmp_path / "network.md"
    page.write_text("```python\nimport redis\n\nredis.Redis(port=1).ping()\n```\n")
    result = run(page, tmp_path)
    assert result.returncode != 0
    assert "without a network" in result.stderr
