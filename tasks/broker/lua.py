"""The broker's Lua scripts: each in a ``.lua`` file beside the module that runs it (as dramatiq
keeps its Redis broker's), read from the installed package once per process."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["lua_script"]


@cache
def lua_script(name: str) -> str:
    """The text of the Lua script ``name`` of this package (``take.lua``...)."""
    return resources.files("tasks.broker").joinpath(name).read_text(encoding="utf-8")
