"""notifier.wire.persistence: a Redis that would lose what notifier keeps in it is warned about at
start-up, by web processes and workers; nothing fails because of it.

A fake client answers CONFIG GET as a configured redis-server would; fakeredis refuses CONFIG,
as managed services do.
"""

import logging

import fakeredis
import pytest
import redis
from celery import Celery
from pyramid.config import Configurator

from notifier.wire import persistence
from notifier.wire.persistence import check_persistence, persistence_warning, safe_url
from tasks.listeners.registry import Registry
from tasks.startup import check_redis_persistence

BROKER = "the broker Redis at redis://broker:6379/0"


class ConfigAnswering:
    """Answers CONFIG GET as a redis-server started with ``config`` would; records the calls."""

    def __init__(self, **config):
        self.config = {"appendonly": "no", "appendfsync": "everysec", "save": "", **config}
        self.asked = []
        self.closed = False

    def config_get(self, pattern):
        self.asked.append(pattern)
        return {pattern: self.config[pattern]}

    def close(self):
        self.closed = True


def warned(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_broker_that_keeps_nothing_on_disk_is_warned_about_naming_what_to_set(caplog):
    with caplog.at_level(logging.INFO, logger="notifier"):
        check_persistence(ConfigAnswering(), BROKER, "every queued message")

    [warning] = warned(caplog)
    assert warning.startswith(
        f"{BROKER} keeps nothing on disk (appendonly no, save ''): a restart loses every "
        "queued message; set `appendonly yes` with `appendfsync everysec` (a crash of the "
        "machine loses about the last second of writes"
    )
    assert "`appendfsync always` (loses nothing; each write waits for the disk)" in warning
    assert not caplog.records[0].exc_info  # one line, no traceback


def test_a_broker_that_keeps_only_snapshots_is_warned_about():
    warning = persistence_warning(
        {"appendonly": "no", "save": "3600 1 300 100"}, BROKER, "every queued message"
    )

    assert warning is not None
    assert warning.startswith(
        f"{BROKER} keeps only snapshots (appendonly no, save '3600 1 300 100'): a restart "
        "loses every queued message written since the last snapshot; set `appendonly yes`"
    )


def test_an_append_only_file_without_fsync_is_warned_about():
    warning = persistence_warning(
        {"appendonly": "yes", "appendfsync": "no"}, BROKER, "every queued message"
    )

    assert warning is not None
    assert "(appendonly yes, appendfsync no): a crash of the machine loses" in warning
    assert "set `appendfsync everysec` (about the last second) or `appendfsync always`" in warning


@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
def test_an_append_only_file_synced_every_second_or_always_is_not_warned_about(appendfsync, caplog):
    client = ConfigAnswering(appendonly="yes", appendfsync=appendfsync)

    with caplog.at_level(logging.INFO, logger="notifier"):
        assert check_persistence(client, BROKER, "every queued message") is None

    assert client.asked == ["appendonly", "appendfsync", "save"]
    assert warned(caplog) == []
    assert warned(caplog, logging.INFO) == []


def test_a_redis_that_refuses_config_gets_one_info_line(caplog):
    with caplog.at_level(logging.INFO, logger="notifier"):
        check_persistence(fakeredis.FakeRedis(), BROKER, "every queued message")

    [info] = [record for record in caplog.records]
    assert info.levelno == logging.INFO
    assert info.getMessage().startswith(f"could not check whether {BROKER} keeps its data")


def test_an_unreachable_broker_gets_one_info_line_and_nothing_fails(caplog):
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)

    with caplog.at_level(logging.INFO, logger="notifier"):
        assert check_persistence(client, BROKER, "every queued message") is None

    [info] = caplog.records
    assert info.levelno == logging.INFO
    assert "(unreachable: " in info.getMessage()


def test_a_url_in_the_logs_never_shows_its_password():
    assert safe_url("redis://user:secret@broker:6379/0") == "redis://user:**@broker:6379/0"
    assert safe_url("redis://:secret@broker:6379/0") == "redis://:**@broker:6379/0"
    assert safe_url("redis://broker:6379/0") == "redis://broker:6379/0"


# -- where the checks run --------------------------------------------------------------------------


class Publisher:
    """Stands in for CeleryPublisher, with the direct Redis connection the real one keeps."""

    client = ConfigAnswering()

    def __init__(self, broker_url, timeout):
        self.broker_url = broker_url

    def publish(self, message, queue):
        pass

    def close(self):
        pass


def test_a_web_process_checks_its_brokers_persistence_when_it_builds_its_publisher(
    monkeypatch, caplog
):
    monkeypatch.setattr("notifier.publisher.CeleryPublisher", Publisher)
    Publisher.client = ConfigAnswering()

    settings = {"notifier.broker_url": "redis://:pw@broker:6379/0"}
    with (
        caplog.at_level(logging.INFO, logger="notifier"),
        Configurator(settings=settings) as config,
    ):
        config.include("notifier")

    [warning] = warned(caplog)
    assert warning.startswith("the broker Redis at redis://:**@broker:6379/0 keeps nothing")
    assert Publisher.client.asked == ["appendonly", "appendfsync", "save"]


def test_a_publisher_through_kombu_says_it_could_not_check(caplog):
    with caplog.at_level(logging.INFO, logger="notifier"):
        persistence.check_broker(None, "rediss://broker:6380/0")
        persistence.check_broker(None, "memory://")

    assert [r.getMessage() for r in caplog.records] == [
        "could not check whether the broker Redis at rediss://broker:6380/0 keeps its data on "
        "disk: published through kombu"
    ]


def mirror(event):
    pass


class WorkerConf:
    broker_url = "redis://broker:6379/0"
    notifier_dead_letters_url = "redis://broker:6379/0"
    notifier_order_url = "redis://versions:6379/0"


def test_a_worker_checks_each_of_its_redis_once_naming_what_each_holds(monkeypatch, caplog):
    clients = {}

    def from_url(url, **options):
        assert options["socket_timeout"] <= 2  # a hung Redis delays start-up 2 s at most
        clients[url] = ConfigAnswering()
        return clients[url]

    monkeypatch.setattr(redis.Redis, "from_url", from_url)
    registry = Registry(Celery("persistence-tests", broker="memory://", set_as_current=False))
    registry.listener("article", name="mirror", ordered=True)(mirror)

    with caplog.at_level(logging.INFO, logger="notifier"):
        check_redis_persistence(WorkerConf, registry)

    first, second = warned(caplog)
    assert first.startswith(
        "the Redis at redis://broker:6379/0 (the broker, the dead letters) keeps nothing on "
        "disk (appendonly no, save ''): a restart loses every queued message and the dead "
        "letters;"
    )
    assert second.startswith(
        "the Redis at redis://versions:6379/0 (the ordered listeners' versions) keeps nothing "
        "on disk (appendonly no, save ''): a restart loses the versions ordered listeners "
        "applied;"
    )
    assert sorted(clients) == ["redis://broker:6379/0", "redis://versions:6379/0"]
    assert all(client.closed for client in clients.values())


def test_a_worker_without_ordered_listeners_does_not_check_their_redis(monkeypatch, caplog):
    clients = []
    monkeypatch.setattr(
        redis.Redis, "from_url", lambda url, **options: clients.append(url) or ConfigAnswering()
    )
    registry = Registry(Celery("persistence-tests", broker="memory://", set_as_current=False))

    check_redis_persistence(WorkerConf, registry)

    assert clients == ["redis://broker:6379/0"]
