"""Run the ```python blocks of one page, in order, in one module, as a reader who pasted them
into one file would: ``python tests/docs/run_examples.py PAGE``.

Started by tests/docs/test_examples.py in a process of its own, in an empty directory, with
Celery's in-memory broker. No example may reach the network: every connection is refused here,
so that one that would write into a real Redis fails instead. A failing block exits with its
traceback, which names the page and the line.
"""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path
from typing import Any, NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from tests.docs.markdown import blocks


def refuse(*args: Any, **kwargs: Any) -> NoReturn:
    raise ConnectionRefusedError("the docs' examples run without a network")


def main(page: Path) -> int:
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse
    # A module of its own, as the reader's file would be: a listener's default name is
    # "example.<function>".
    module = types.ModuleType("example")
    module.__file__ = str(page)
    sys.modules["example"] = module
    ran = 0
    for block in blocks(page):
        if block.language != "python":
            continue
        # Blank lines first, so that a traceback's line numbers are the page's.
        code = compile("\n" * (block.line - 1) + block.code, str(page), "exec")
        exec(code, module.__dict__)
        ran += 1
    print(f"{page}: {ran} python block(s) ran")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
