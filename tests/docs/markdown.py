"""Reading the pages of the docs: which pages there are, and their fenced code blocks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# An opening or closing fence: three backticks or more, then the info string (MyST's
# directives, ```{toctree}, are fences too).
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language (the first word of its fence's info string),
    the line its code starts on, and the code."""

    page: Path
    language: str
    line: int
    code: str

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """Every page of the docs: the README, the bench notes and docs/*.md."""
    return [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    opening: re.Match[str] | None = None
    start = 0
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if match is None:
            continue
        if opening is None:
            opening, start = match, number
        elif match["fence"].startswith(opening["fence"]) and not match["info"].strip():
            code = "\n".join(
                text.removeprefix(opening["indent"]) for text in lines[start : number - 1]
            )
            language = (opening["info"].split() or [""])[0]
            found.append(Block(page, language, start + 1, code + "\n"))
            opening = None
    if opening is not None:
        raise ValueError(f"{page.relative_to(ROOT)}:{start}: a fence that is never closed")
    return found


def prose(page: Path) -> str:
    """The text of ``page`` outside its fenced blocks."""
    inside = {
        number
        for block in blocks(page)
        for number in range(block.line - 1, block.line + block.code.count("\n") + 1)
    }
    lines = page.read_text().splitlines()
    return "\n".join(line for number, line in enumerate(lines, 1) if number not in inside)
