"""What the web side counts: the messages it published, spooled, lost or holds in its outbox.

prometheus-client's metrics, in its default registry (the one ``prometheus_client``'s own
exporters and Kinto's ``/__metrics__`` serve; in its multiprocess mode when
``PROMETHEUS_MULTIPROC_DIR`` is set, as under a prefork server), made when the first publisher
is built. In Kinto, with a metrics backend (``kinto.plugins.statsd`` or
``kinto.plugins.prometheus``: ``request.registry.metrics``), the same counts also go to it,
under ``notifier.*`` keys, from the first request that publishes. Names, labels and what an
alert on each means: docs/metrics.md.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PUBLISH_BUCKETS", "WebMetrics", "web_metrics"]

logger = logging.getLogger("notifier")

#: The publish times the latency's histogram tells apart, in seconds.
PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WebMetrics:
    """The web side's counters, in ``registry``, and the Kinto metrics services told too."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.published_total = Counter(
            "notifier_events_published",
            "Messages the broker took, by queue (from a request, the spool or the outbox).",
            ["queue"],
            registry=registry,
        )
        self.publish_errors = Counter(
            "notifier_publish_errors",
            "Publishes the broker (or JSON) refused, by queue and error class.",
            ["queue", "error"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "notifier_publish_seconds",
            "How long each publish to the broker took, in seconds, failed ones included.",
            buckets=PUBLISH_BUCKETS,
            registry=registry,
        )
        self.spooled_total = Counter(
            "notifier_events_spooled",
            "Messages the broker did not take that were kept in the spool, by queue.",
            ["queue"],
            registry=registry,
        )
        self.lost_total = Counter(
            "notifier_events_lost",
            "Messages neither published nor kept (no spool, or a spool that refused), by queue.",
            ["queue"],
            registry=registry,
        )
        self.outbox_waiting = Gauge(
            "notifier_outbox_waiting",
            "Committed messages this process's outbox holds and did not publish yet.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        #: Kinto's metrics services (IMetricsService) told the same counts.
        self.services: list[Any] = []
        self._told_trouble = False

    def report_to(self, registry: Any) -> None:
        """Tell the metrics service of the Pyramid ``registry`` (Kinto's), if it has one."""
        try:
            service = getattr(registry, "metrics", None)
        except Exception:  # a registry property that cannot answer: no service
            return
        if service is not None and all(service is not known for known in self.services):
            self.services.append(service)

    def published(self, queue: str, seconds: float) -> None:
        self.published_total.labels(queue).inc()
        self.publish_seconds.observe(seconds)
        if self.services:
            self._tell("count", "notifier.published")
            self._tell("timer", "notifier.publish_seconds", value=seconds)

    def publish_failed(self, queue: str, error: BaseException, seconds: float) -> None:
        self.publish_errors.labels(queue, type(error).__name__).inc()
        self.publish_seconds.observe(seconds)
        if self.services:
            self._tell("count", "notifier.publish_errors")

    def spooled(self, queue: str) -> None:
        self.spooled_total.labels(queue).inc()
        if self.services:
            self._tell("count", "notifier.spooled")

    def lost(self, queue: str) -> None:
        self.lost_total.labels(queue).inc()
        if self.services:
            self._tell("count", "notifier.lost")

    def outbox_holds(self, count: int) -> None:
        self.outbox_waiting.set(count)

    def _tell(self, method: str, key: str, **kwargs: Any) -> None:
        # A metrics backend never fails a publish: what it raises is logged, once.
        for service in self.services:
            try:
                getattr(service, method)(key, **kwargs)
            except Exception:
                if not self._told_trouble:
                    self._told_trouble = True
                    logger.exception("could not report %s to the metrics service", key)


_lock = threading.Lock()
_metrics: WebMetrics | None = None


def web_metrics() -> WebMetrics:
    """The process's metrics, in prometheus-client's default registry (made on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = WebMetrics()
        return _metrics
