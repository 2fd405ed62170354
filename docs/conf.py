"""Sphinx configuration of notifier's documentation: MyST Markdown pages, built by ./scripts/docs
with every warning an error (``-W --keep-going -n``)."""

from __future__ import annotations

project = "notifier"
author = "notifier's authors"
copyright = "notifier's authors"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Anchors for the headings down to ####, so that [a setting](settings.md#notifierbroker_url)
# links to its entry; a link to an anchor that does not exist is a warning, hence an error.
myst_heading_anchors = 4

html_theme = "alabaster"
html_title = "notifier"
# docs/_static/flower.png: the picture of Flower that ./scripts/screenshot takes (watching.md).
html_static_path = ["_static"]
