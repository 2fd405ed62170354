"""The web side's metrics: what a web process published, spooled and lost, in prometheus-client
and in Kinto's metrics service."""

import fakeredis
import pytest
from prometheus_client import CollectorRegistry

from notifier.events import AfterResourceChanged
from notifier.metrics import WebMetrics
from notifier.publisher import CeleryPublisher
from notifier.settings import parse_settings
from notifier.spool import Spool
from notifier.subscriber import Subscriber
from tests.unit.fakes import FakeRequest

#: A Redis URL nothing listens on: the broker refuses at once.
REFUSING = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def no_spool_left_behind(tmp_path):
    """A test's spool files go with it: its spool's thread, waking later, finds nothing."""
    yield
    for path in tmp_path.rglob("spool-*"):
        if path.is_file():
            path.unlink()


@pytest.fixture
def prometheus():
    return CollectorRegistry()


@pytest.fixture
def metrics(prometheus):
    return WebMetrics(prometheus)


def sample(prometheus, name, **labels):
    return prometheus.get_sample_value(name, labels) or 0.0


def publisher(metrics, *, refusing=False):
    celery = CeleryPublisher(REFUSING, 0.5, metrics)
    if not refusing:
        celery.client = fakeredis.FakeRedis()
    return celery


def event(n, request=None):
    payload = {"action": "create", "uri": f"/articles/{n}", "resource_name": "article"}
    return AfterResourceChanged(payload, [{"new": {"id": str(n)}}], request or FakeRequest())


def subscriber(celery, metrics, spool=None):
    return Subscriber(parse_settings({}, environ={}), celery, spool, metrics=metrics)


def test_each_event_the_broker_takes_is_counted_published_and_timed(prometheus, metrics):
    publish = subscriber(publisher(metrics), metrics)

    for n in range(5):
        publish(event(n))

    assert sample(prometheus, "notifier_events_published_total", queue="notifier") == 5
    assert sample(prometheus, "notifier_publish_seconds_count") == 5
    assert sample(prometheus, "notifier_events_spooled_total", queue="notifier") == 0


def test_an_event_the_broker_refuses_is_counted_as_an_error_and_spooled(
    prometheus, metrics, tmp_path
):
    celery = publisher(metrics, refusing=True)
    spool = Spool(tmp_path, celery.publish, retry=60)
    publish = subscriber(celery, metrics, spool)

    for n in range(3):
        publish(event(n, FakeRequest()))

    # One error each request: its later events are spooled without trying the broker again.
    assert (
        sample(
            prometheus, "notifier_publish_errors_total", queue="notifier", error="ConnectionError"
        )
        == 1
    )
    assert sample(prometheus, "notifier_events_spooled_total", queue="notifier") == 3
    assert sample(prometheus, "notifier_events_published_total", queue="notifier") == 0


def test_the_spool_publishing_later_is_counted_published(prometheus, metrics, tmp_path):
    celery = publisher(metrics, refusing=True)
    spool = Spool(tmp_path, celery.publish, retry=60)
    publish = subscriber(celery, metrics, spool)
    publish(event(1))
    celery.client = fakeredis.FakeRedis()

    spool.flush()

    assert sample(prometheus, "notifier_events_published_total", queue="notifier") == 1


def test_an_event_with_no_spool_to_go_to_is_counted_lost(prometheus, metrics):
    publish = subscriber(publisher(metrics, refusing=True), metrics)

    publish(event(1))

    assert sample(prometheus, "notifier_events_lost_total", queue="notifier") == 1


class RecordingService:
    """Kinto's metrics service (IMetricsService), as kinto.plugins.statsd has one."""

    def __init__(self):
        self.counts = []
        self.timers = []

    def count(self, key, count=1, unique=None):
        self.counts.append(key)

    def timer(self, key, value=None, labels=()):
        self.timers.append(key)

    def observe(self, key, value, labels=()):
        raise AssertionError("not used")


class KintoRegistry:
    def __init__(self, service):
        self.metrics = service


def kinto_request(service):
    request = FakeRequest()
    request.registry = KintoRegistry(service)
    return request


def test_in_kinto_the_counts_also_go_to_its_metrics_service(metrics, tmp_path):
    service = RecordingService()
    celery = publisher(metrics)
    publish = subscriber(celery, metrics)

    publish(event(1, kinto_request(service)))
    publish(event(2, kinto_request(service)))
    celery.client = None
    celery.app = None  # the next publish fails: no broker at all

    publish(event(3, kinto_request(service)))

    assert service.counts == [
        "notifier.published",
        "notifier.published",
        "notifier.publish_errors",
        "notifier.lost",
    ]
    assert service.timers == ["notifier.publish_seconds"] * 2


def test_a_metrics_service_that_raises_never_fails_a_publish(prometheus, metrics, caplog):
    class Broken(RecordingService):
        def count(self, key, count=1, unique=None):
            raise RuntimeError("statsd is gone")

    publish = subscriber(publisher(metrics), metrics)

    publish(event(1, kinto_request(Broken())))
    publish(event(2, kinto_request(Broken())))

    assert sample(prometheus, "notifier_events_published_total", queue="notifier") == 2
    assert caplog.text.count("could not report notifier.published") == 1
