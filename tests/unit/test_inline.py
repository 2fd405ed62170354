"""tasks.dispatch.inline: dispatch runs the first attempt of each listener it may run itself,
one after another, each ending as that listener's own task would.

The registry is wired as a worker's (tests/unit/conftest.py): its run wrappers time and count
each run, and Celery's signals reach the handlers of tasks/dispatch/signals.py. The listener
tasks' sends are recorded instead of reaching a broker.
"""

import pytest
from celery import Task, signals
from celery.exceptions import Ignore, Reject

from tasks.dispatch import signals as _signals  # noqa: F401  (connects the signal handlers)
from tasks.dispatch.delivery import Delivery
from tasks.dispatch.inline import Inline
from tasks.dispatch.pace import Pace
from tasks.dispatch.run import DispatchRun
from tests.unit.builders import message


@pytest.fixture(autouse=True)
def worker(wired):
    return wired


class Sends(list):
    """What the watched listener tasks would have sent: (listener name, options)."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.monkeypatch = monkeypatch

    def watch(self, listener):
        def apply_async(args=None, kwargs=None, **options):
            self.append((listener.name, {"args": args, **options}))

        self.monkeypatch.setattr(listener.task, "apply_async", apply_async)


@pytest.fixture
def sent(monkeypatch):
    return Sends(monkeypatch)


def consumed(registry, sent, function, name, **options):
    """Register ``function`` as a listener of articles whose queue this worker consumes."""
    registry.listener("article", name=name, **options)(function)
    listener = registry[name]
    registry.app.amqp.queues.select_add(listener.queue)
    sent.watch(listener)
    return listener


def appending(received, name):
    """A listener that notes its ``name`` in ``received`` for each event."""

    def listener(event):
        received.append(name)

    return listener


def nothing(event):
    return None


def handle(wired, data, **delivery):
    """Handle ``data`` as a dispatch run does; return the listeners it reached and the delivery."""
    run = DispatchRun(wired.registry, wired.dead_letters, None, inline=wired.inline)
    handled = Delivery(data, **delivery)
    return run.handle(handled), handled


def test_three_listeners_each_get_the_event_once_in_dispatch_without_a_task_of_their_own(
    wired, registry, sent
):
    received = []
    for name in ("search", "cache", "mail"):
        consumed(registry, sent, appending(received, name), name)

    reached, _ = handle(wired, message())

    assert reached == ["search", "cache", "mail"]
    assert received == ["search", "cache", "mail"]
    assert sent == []


def test_a_listener_that_raises_in_dispatch_neither_stops_nor_reruns_the_others(
    wired, registry, sent, dead_letters
):
    received = []

    def broken(event):
        raise ZeroDivisionError("division by zero")

    consumed(registry, sent, appending(received, "search"), "search")
    consumed(registry, sent, broken, "cache", retry_jitter=False)
    consumed(registry, sent, appending(received, "mail"), "mail")
    data = message()

    reached, delivery = handle(wired, data)

    assert received == ["search", "mail"]
    assert reached == ["search", "cache", "mail"]
    # Only the one that raised gets a task: its second attempt, after its own backoff.
    [(name, options)] = sent
    assert name == "cache"
    assert options["task_id"] == f"{data['event_id']}:cache"
    assert (options["retries"], options["countdown"]) == (1, 1.0)
    assert options["queue"] == registry["cache"].queue
    assert delivery.not_sent == []
    assert list(dead_letters) == []


def test_a_listener_that_fails_for_good_in_dispatch_is_dead_lettered_alone(
    wired, registry, sent, dead_letters
):
    received = []

    def broken(event):
        raise KeyError("title")

    consumed(registry, sent, received.append, "search")
    consumed(registry, sent, broken, "cache", autoretry_for=(ValueError,))
    data = message()

    handle(wired, data)

    assert len(received) == 1
    [letter] = list(dead_letters)
    assert (letter.listener, letter.attempts, letter.message) == ("cache", 1, data)
    assert letter.reason == "KeyError: 'title'"
    assert "in broken" in letter.traceback
    assert sent == []


def test_each_listener_run_in_dispatch_sends_celery_s_signals_under_its_own_task_id(
    wired, registry, sent
):
    seen = []

    def prerun(sender=None, task_id=None, task=None, **kwargs):
        seen.append(("prerun", task_id, task.request.parent_id))

    def success(sender=None, **kwargs):
        seen.append(("success", sender.request.id, None))

    signals.task_prerun.connect(prerun, weak=False)
    signals.task_success.connect(success, weak=False)
    consumed(registry, sent, nothing, "search")
    consumed(registry, sent, nothing, "cache")
    data = message()
    try:
        handle(wired, data)
    finally:
        signals.task_prerun.disconnect(prerun)
        signals.task_success.disconnect(success)

    event_id = data["event_id"]
    assert seen == [
        ("prerun", f"{event_id}:search", event_id),
        ("success", f"{event_id}:search", None),
        ("prerun", f"{event_id}:cache", event_id),
        ("success", f"{event_id}:cache", None),
    ]


def test_a_task_class_with_hooks_of_its_own_runs_in_dispatch_with_its_hooks_called(
    wired, registry, sent
):
    called = []

    class Audited(Task):
        def on_success(self, retval, task_id, args, kwargs):
            called.append(("on_success", task_id))

    @registry.app.task(base=Audited, name="audit.task")
    def audit(event):
        called.append(("run", audit.request.id))

    registry.listener("article", name="audit")(audit)
    registry.app.amqp.queues.select_add(registry["audit"].queue)
    sent.watch(registry["audit"])
    data = message()

    handle(wired, data)

    task_id = f"{data['event_id']}:audit"
    assert called == [("run", task_id), ("on_success", task_id)]
    assert sent == []


def test_a_listener_slower_than_the_budget_gets_its_own_task_and_the_others_still_run_here(
    wired, registry, sent
):
    received = []
    consumed(registry, sent, received.append, "search")
    consumed(registry, sent, received.append, "mail")
    wired.pace.record("mail", 0.001)  # its first run in the process: not counted
    wired.pace.record("mail", 0.05)  # then its runs took 50 ms
    data = message()

    reached, _ = handle(wired, data)

    assert len(received) == 1
    assert sorted(reached) == ["mail", "search"]
    [(name, options)] = sent
    assert (name, options["task_id"]) == ("mail", f"{data['event_id']}:mail")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_listeners_first_run_in_a_process_does_not_count_against_it():
    pace = Pace(budget=0.005)

    pace.record("search", 0.03)  # it connected to its database
    pace.record("search", 0.001)

    assert pace.average("search") == 0.001
    assert pace.fits("search")


def test_one_stall_does_not_send_a_fast_listener_out_of_dispatch_three_slow_runs_do():
    pace = Pace(budget=0.005)
    for _ in range(11):
        pace.record("search", 0.0005)

    pace.record("search", 0.045)  # the whole machine stalled
    assert pace.fits("search")

    pace.record("search", 0.045)
    pace.record("search", 0.045)
    assert not pace.fits("search")


def test_a_listener_that_hung_leaves_dispatch_at_once_even_on_its_first_run():
    pace = Pace(budget=0.02)

    pace.record("mail", 30.0)  # its mail server did not answer

    assert pace.slow("mail")
    assert not pace.fits("mail")


def test_a_listener_that_hung_is_tried_in_dispatch_again_a_minute_later_at_most():
    clock = Clock()
    pace = Pace(budget=0.02, clock=clock)
    pace.record("mail", 240.0)
    assert not pace.fits("mail")

    clock.now = 60.0

    assert pace.fits("mail")


def test_a_slow_listener_comes_back_to_dispatch_once_its_runs_are_fast_again():
    pace = Pace(budget=0.005)
    pace.record("mail", 0.05)
    pace.record("mail", 0.05)
    assert not pace.fits("mail")

    for _ in range(20):  # its own task's runs
        pace.record("mail", 0.0001)

    assert pace.fits("mail")


def test_a_slow_listener_is_tried_in_dispatch_again_once_every_hundred_times_its_average():
    clock = Clock()
    pace = Pace(budget=0.005, clock=clock)
    pace.record("mail", 0.05)
    pace.record("mail", 0.05)

    assert not pace.fits("mail")
    clock.now = 4.9
    assert not pace.fits("mail")
    clock.now = 5.0
    assert pace.fits("mail")  # one try, 5 s (100 x 50 ms) later
    assert not pace.fits("mail")
    clock.now = 10.0
    assert pace.fits("mail")


def test_each_run_is_timed_for_the_pace_whichever_task_ran_it(wired, registry, sent):
    consumed(registry, sent, nothing, "search")

    handle(wired, message())
    registry["search"].task.run(message())  # its own task's run

    assert wired.pace.average("search") is not None


def test_a_redelivered_message_hands_each_listener_that_ran_here_to_its_own_task(
    wired, registry, sent
):
    received = []
    consumed(registry, sent, received.append, "search")
    consumed(registry, sent, received.append, "mail")
    data = message()

    reached, _ = handle(wired, data, redelivered=True)

    assert received == []
    assert reached == ["search", "mail"]
    assert [(name, options["retries"]) for name, options in sent] == [("search", 1), ("mail", 1)]


def test_a_listener_that_raises_ignore_in_dispatch_is_ignored_not_dead_lettered(
    wired, registry, sent, dead_letters
):
    def skip_drafts(event):
        raise Ignore()

    consumed(registry, sent, skip_drafts, "search")

    assert handle(wired, message())[0] == ["search"]
    assert list(dead_letters) == []
    assert sent == []


def test_a_listener_that_rejects_its_message_in_dispatch_drops_it_without_a_dead_letter(
    wired, registry, sent, dead_letters
):
    def reject(event):
        raise Reject(MemoryError("too large"), requeue=False)

    # Not retried: with the default autoretry_for=(Exception,), Celery retries a Reject too.
    consumed(registry, sent, reject, "search", autoretry_for=(ValueError,))

    assert handle(wired, message())[0] == ["search"]
    assert list(dead_letters) == []
    assert sent == []


def test_a_listener_that_requeues_its_message_in_dispatch_has_it_sent_to_its_task(
    wired, registry, sent, dead_letters
):
    def requeue(event):
        raise Reject("later", requeue=True)

    consumed(registry, sent, requeue, "search", autoretry_for=(ValueError,))
    data = message()

    handle(wired, data)

    [(_, options)] = sent
    assert options["task_id"] == f"{data['event_id']}:search"
    assert (options["args"], options["retries"]) == ((data,), 0)
    assert list(dead_letters) == []


def test_a_listener_with_a_rate_limit_gets_its_own_task(wired, registry, sent):
    received = []
    consumed(registry, sent, received.append, "search")
    consumed(registry, sent, received.append, "mail", rate_limit="10/s")

    handle(wired, message())

    assert len(received) == 1
    assert [name for name, _ in sent] == ["mail"]


def test_on_a_celery_whose_internals_were_not_checked_each_listener_runs_as_its_own_task(
    monkeypatch, wired, registry, sent
):
    received = []
    consumed(registry, sent, received.append, "search")
    consumed(registry, sent, received.append, "mail")
    monkeypatch.setattr(
        "tasks.broker.versions.installed_versions",
        lambda: {"celery": "5.99.0", "kombu": "5.99.0"},
    )

    handle(wired, message())

    assert received == []
    assert [name for name, _ in sent] == ["search", "mail"]


def test_with_a_budget_of_zero_every_listener_gets_its_own_task(registry, dead_letters, sent):
    received = []
    consumed(registry, sent, received.append, "search")
    consumed(registry, sent, received.append, "mail")
    run = DispatchRun(registry, dead_letters, None, inline=Inline(Pace(budget=0)))

    run.handle(Delivery(message()))

    assert received == []
    assert [name for name, _ in sent] == ["search", "mail"]


def test_what_one_listener_changes_in_its_event_the_next_one_never_sees(wired, registry, sent):
    seen = []

    def strip_titles(event):
        event.impacted_records[0]["new"]["title"] = "(stripped)"
        event.payload["uri"] = "/changed"

    def index(event):
        seen.append((event.impacted_records[0]["new"].get("title"), event.payload["uri"]))

    consumed(registry, sent, strip_titles, "strip")
    consumed(registry, sent, index, "index")
    data = message()
    data["impacted_records"][0]["new"]["title"] = "Hello"

    handle(wired, data)

    assert seen == [("Hello", "/articles")]
    assert data["impacted_records"][0]["new"]["title"] == "Hello"


def test_a_reject_from_a_listeners_hook_ends_its_run_alone(wired, registry, sent):
    received = []

    class Picky(Task):
        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            raise Reject("not after all", requeue=False)

    @registry.app.task(base=Picky, name="picky.task")
    def picky(event):
        received.append("picky")

    registry.listener("article", name="picky")(picky)
    registry.app.amqp.queues.select_add(registry["picky"].queue)
    sent.watch(registry["picky"])
    consumed(registry, sent, appending(received, "mail"), "mail")

    reached, delivery = handle(wired, message())

    assert received == ["picky", "mail"]
    assert reached == ["picky", "mail"]
    assert delivery.not_sent == []


def test_once_half_the_soft_time_limit_is_spent_the_listeners_left_get_their_own_tasks(
    wired, registry, sent
):
    clock = Clock()
    received = []
    registry.app.conf.task_soft_time_limit = 240  # the workers' default (tasks/defaults.py)

    def hangs(event):
        received.append("hangs")
        clock.now = 200.0  # of the 240 s soft limit

    consumed(registry, sent, hangs, "hangs")
    consumed(registry, sent, appending(received, "mail"), "mail")
    run = DispatchRun(wired.registry, wired.dead_letters, None, inline=wired.inline, clock=clock)
    data = message()

    assert sorted(run.handle(Delivery(data))) == ["hangs", "mail"]

    assert received == ["hangs"]
    [(name, options)] = sent
    assert (name, options["task_id"], options["retries"]) == ("mail", f"{data['event_id']}:mail", 0)
    assert registry["mail"].task.soft_time_limit == 240  # it may run in dispatch


def test_a_redelivered_message_sends_a_slow_listener_its_first_attempt_not_its_second(
    wired, registry, sent
):
    consumed(registry, sent, nothing, "search")
    consumed(registry, sent, nothing, "mail")
    wired.pace.record("mail", 0.001)
    wired.pace.record("mail", 0.5)  # it has its own task for each event

    handle(wired, message(), redelivered=True)

    assert sorted((name, options.get("retries", 0)) for name, options in sent) == [
        ("mail", 0),
        ("search", 1),
    ]
