"""The listeners notifier ships: the search index."""
