"""The worker's metrics, with prometheus-client (the list: docs/metrics.md).

- :mod:`tasks.metrics.recording`: what pool processes count, from Celery's signals;
- :mod:`tasks.metrics.endpoint`: the multiprocess directory, the gauges read at scrape time and
  the HTTP server of the worker's main process (``NOTIFIER_METRICS_PORT``).
"""

from tasks.metrics.endpoint import StoreCollector, mark_dead, serve, use_multiprocess_dir
from tasks.metrics.recording import OUTCOMES, WorkerMetrics

__all__ = [
    "OUTCOMES",
    "StoreCollector",
    "WorkerMetrics",
    "mark_dead",
    "serve",
    "use_multiprocess_dir",
]
