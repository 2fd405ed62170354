"""Benchmarks: notifier side by side with raw Redis and raw Celery (``python -m bench``)."""
