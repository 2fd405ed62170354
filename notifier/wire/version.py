"""notifier's version, as its command-line tools say it (``--version``)."""

from __future__ import annotations

import importlib.metadata

__all__ = ["DISTRIBUTION", "version"]

DISTRIBUTION = "pyramid-celery-notifier"


def version() -> str:
    """The installed distribution's version (``(not installed)`` from a bare source tree)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"
