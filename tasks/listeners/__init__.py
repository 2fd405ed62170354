"""Worker-side listeners: ``@listener`` and its registry, the event a listener receives, and
what ordered and batch listeners add."""
