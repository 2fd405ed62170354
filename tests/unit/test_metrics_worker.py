"""The worker's metrics: the messages dispatch handles, and each listener's runs, as a user of
Prometheus reads them."""

import os
import subprocess
import sys
import time
from pathlib import Path

import fakeredis
import pytest
from celery import Celery
from prometheus_client import CollectorRegistry, values

from notifier.errors import ConfigurationError
from tasks.dispatch import signals as _signals  # noqa: F401  (connects the signal handlers)
from tasks.dispatch.delivery import Delivery
from tasks.dispatch.run import DispatchRun
from tasks.metrics import StoreCollector, WorkerMetrics, use_multiprocess_dir
from tasks.wiring import bind, collaborators
from tests.unit.builders import message

EVENTS = 4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def prometheus():
    return CollectorRegistry()


@pytest.fixture
def wired(registry, dead_letters, order_guard, prometheus):
    """A worker's collaborators around the fakes, counting in ``prometheus``."""
    built = collaborators(registry, dead_letters, order_guard, metrics=WorkerMetrics(prometheus))
    bind(registry.app, built)
    return built


def sample(prometheus, name, **labels):
    return prometheus.get_sample_value(name, labels) or 0.0


def runs(prometheus, listener, outcome):
    return sample(prometheus, "notifier_listener_runs_total", listener=listener, outcome=outcome)


def handle(wired, data):
    """Handle ``data`` as a dispatch run over the queue ``notifier`` does."""
    run = DispatchRun(
        wired.registry,
        wired.dead_letters,
        "notifier",
        coverage=wired.coverage,
        inline=wired.inline,
        metrics=wired.metrics,
    )
    run.handle(Delivery(data))


def consumed(registry, function, name, **options):
    registry.listener("article", name=name, **options)(function)
    listener = registry[name]
    registry.app.amqp.queues.select_add(listener.queue)
    return listener


def broken(event):
    raise KeyError("title")


def fine(event):
    return None


def slow(event):
    time.sleep(0.02)


def other_task():
    return None


def test_after_n_events_with_a_failing_listener_each_listener_has_its_outcome_counted(
    wired, registry, prometheus, monkeypatch
):
    consumed(registry, fine, "search")
    consumed(registry, broken, "mail", autoretry_for=())

    for _ in range(EVENTS):
        handle(wired, message())

    assert sample(prometheus, "notifier_events_received_total", queue="notifier") == EVENTS
    assert runs(prometheus, "search", "success") == EVENTS
    assert runs(prometheus, "mail", "dead_letter") == EVENTS
    assert runs(prometheus, "mail", "success") == 0
    assert runs(prometheus, "search", "dead_letter") == 0
    assert len(wired.dead_letters) == EVENTS


def test_one_event_to_a_listener_that_fails_for_good_counts_one_dead_letter(
    wired, registry, prometheus
):
    listener = consumed(registry, broken, "mail", max_retries=0)

    listener.task.apply(args=(message(),))

    assert runs(prometheus, "mail", "dead_letter") == 1
    assert sample(prometheus, "notifier_listener_run_seconds_count", listener="mail") == 1


def test_a_run_that_will_be_retried_counts_a_retry_not_a_dead_letter(wired, registry, prometheus):
    listener = consumed(registry, broken, "mail", max_retries=3, autoretry_for=(KeyError,))
    # Celery's eager apply runs each retry at once: three retries, then the dead letter.
    listener.task.apply(args=(message(),))

    assert runs(prometheus, "mail", "retry") == 3
    assert runs(prometheus, "mail", "dead_letter") == 1


def test_a_dead_letter_that_cannot_be_kept_counts_a_failure(
    wired, registry, prometheus, dead_letters, monkeypatch
):
    listener = consumed(registry, broken, "mail", max_retries=0)

    def unreachable(*args, **kwargs):
        raise ConnectionError("the dead letters are gone")

    monkeypatch.setattr(dead_letters, "add", unreachable)
    listener.task.apply(args=(message(),))

    assert runs(prometheus, "mail", "failure") == 1
    assert runs(prometheus, "mail", "dead_letter") == 0


def test_each_run_is_timed_and_its_lag_measured_from_the_commit(wired, registry, prometheus):
    listener = consumed(registry, slow, "search")
    data = {**message(), "committed_at": time.time() - 2}

    listener.task.apply(args=(data,))

    assert sample(prometheus, "notifier_listener_run_seconds_count", listener="search") == 1
    assert sample(prometheus, "notifier_listener_run_seconds_sum", listener="search") >= 0.02
    assert sample(prometheus, "notifier_listener_lag_seconds_count", listener="search") == 1
    lag = sample(prometheus, "notifier_listener_lag_seconds_sum", listener="search")
    assert 2 <= lag < 10


def test_a_message_from_before_commit_times_has_no_lag_observed(wired, registry, prometheus):
    listener = consumed(registry, fine, "search")

    listener.task.apply(args=(message(),))

    assert sample(prometheus, "notifier_listener_lag_seconds_count", listener="search") == 0
    assert runs(prometheus, "search", "success") == 1


def test_tasks_that_are_no_listeners_are_not_counted(wired, registry, prometheus):
    other = registry.app.task(name="not.a.listener")(other_task)

    other.apply()

    assert prometheus.get_sample_value("notifier_listener_runs_total", {}) is None
    assert [s for m in prometheus.collect() for s in m.samples if s.value] == []


def test_a_worker_without_metrics_counts_nothing(registry, dead_letters, order_guard):
    built = collaborators(registry, dead_letters, order_guard)
    bind(registry.app, built)
    listener = consumed(registry, fine, "search")

    listener.task.apply(args=(message(),))  # no metrics: nothing to count, nothing raised

    assert built.metrics is None


# -- what is read at scrape time ---------------------------------------------------------------


def test_a_scrape_reads_the_dead_letters_held_by_listener_and_each_queues_depth(dead_letters):
    app = Celery("scraped", broker="memory://", set_as_current=False)
    for listener in ("mail", "mail", "search", None):
        dead_letters.add("it broke", {"event_id": "e1"}, listener=listener)
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue("scraped-notifier")
        for n in range(3):
            queue.put({"n": n})
        queue.close()
    scraped = CollectorRegistry()
    scraped.register(StoreCollector(dead_letters, lambda: ["scraped-notifier", "empty"], app))

    assert scraped.get_sample_value("notifier_dead_letters", {"listener": "mail"}) == 2
    assert scraped.get_sample_value("notifier_dead_letters", {"listener": "search"}) == 1
    assert scraped.get_sample_value("notifier_dead_letters", {"listener": ""}) == 1
    assert scraped.get_sample_value("notifier_queue_depth", {"queue": "scraped-notifier"}) == 3
    assert scraped.get_sample_value("notifier_queue_depth", {"queue": "empty"}) == 0


def test_dead_letters_out_of_reach_leave_their_gauge_out_of_the_scrape(caplog):
    app = Celery("scraped", broker="memory://", set_as_current=False)
    server = fakeredis.FakeServer()
    server.connected = False
    from tasks.dead_letters import DeadLetters

    unreachable = DeadLetters(fakeredis.FakeRedis(server=server))
    scraped = CollectorRegistry()
    scraped.register(StoreCollector(unreachable, lambda: ["notifier"], app))

    assert scraped.get_sample_value("notifier_dead_letters", {"listener": "mail"}) is None
    assert scraped.get_sample_value("notifier_queue_depth", {"queue": "notifier"}) == 0
    assert "could not read the dead letters" in caplog.text


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["http", "70000"])
def test_a_metrics_port_that_is_no_port_fails_at_start_up_naming_it(port):
    # What ``celery -A tasks worker`` does first (tests/unit/test_worker_settings.py).
    started = subprocess.run(
        [sys.executable, "-c", "import tasks; tasks.app.loader.init_worker()"],
        cwd=REPO,
        env={**os.environ, "NOTIFIER_METRICS_PORT": port},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert started.returncode != 0
    assert (
        f"NOTIFIER_METRICS_PORT = {port!r} is not valid: a TCP port number from 1 to 65535"
        in started.stderr
    )


def test_a_metrics_dir_the_worker_cannot_write_in_fails_at_start_up(tmp_path):
    with pytest.raises(ConfigurationError) as raised:
        use_multiprocess_dir({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")})

    assert "PROMETHEUS_MULTIPROC_DIR" in str(raised.value)


def test_without_a_metrics_dir_the_worker_makes_a_private_one(monkeypatch):
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # put back after the test
    environ = {}

    directory = use_multiprocess_dir(environ)

    assert environ["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
    assert directory.is_dir()
