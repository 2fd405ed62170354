"""Dispatch: the task that receives each message and runs every matching listener.

Each matching listener runs as its own Celery task, so one that fails neither blocks nor
re-runs the others. A message that does not follow the wire contract, and a listener that
failed its last attempt, end in the dead-letter store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Collection
from functools import cache
from typing import Any

import redis
from celery import Task, signals, states
from kombu.exceptions import KombuError

from notifier.errors import ListenersNotSent, MalformedMessage
from notifier.wire.message import DISPATCH_TASK, Message, decode
from notifier.wire.routing import DEFAULT_QUEUE
from tasks.app import app, registry
from tasks.broker.taking import Taken, Taker, taker_of
from tasks.dead_letters import DeadLetters
from tasks.dispatch.coverage import coverage
from tasks.dispatch.inline import run_alone
from tasks.listeners.batch import Batches, Delivery, listener_task_id
from tasks.listeners.ordered import OrderGuard
from tasks.listeners.registry import Listener, Registry

__all__ = [
    "DISPATCH_RETRIES",
    "DispatchRun",
    "dead_letters",
    "dispatch",
    "dispatch_countdown",
    "fan_out",
    "taker",
]

logger = logging.getLogger("notifier")

#: How often dispatch tries again to send a message the broker did not take (backoff: 1 s,
#: 2 s, 4 s... at most 60 s apart, about 15 minutes in all).
DISPATCH_RETRIES = 20


def dispatch_countdown(retries: int) -> int:
    """How long dispatch waits before its attempt after ``retries`` retries, in seconds."""
    return int(min(2**retries, 60))


@cache
def dead_letters() -> DeadLetters:
    """The dead-letter store of this worker process."""
    return DeadLetters.from_url(app.conf.notifier_dead_letters_url)


@cache
def order_guard() -> OrderGuard:
    """The per-object versions of this worker's ordered listeners."""
    # A dead worker's claims lapse about when its messages are handed out again.
    return OrderGuard.from_url(
        app.conf.notifier_order_url, lease=app.conf.notifier_visibility_timeout
    )


def fan_out(
    data: Any,
    registry: Registry,
    dead_letters: DeadLetters,
    only: Collection[str] | None = None,
    queue: str | None = None,
    taker: Taker | None = None,
    *,
    decoded: tuple[Message, list[Listener]] | None = None,
) -> list[str]:
    """Send the message ``data`` to every listener of ``registry`` that wants it (of those
    named in ``only``, when given), and return their names. With a ``taker``, the broker's,
    the tasks it may write go in one round trip (:meth:`Taker.send`); the others through
    Celery. ``decoded``: the message decoded and those listeners, when the caller has them.

    A malformed message is dead-lettered with the reason (and ``queue``, where it came from).
    When the broker does not take the message for some listeners, the others still get it, and
    :class:`ListenersNotSent` names the ones that did not.
    """
    if decoded is not None:
        message, wanted = decoded
    else:
        try:
            message = decode(data)
        except MalformedMessage as exc:
            letter = dead_letters.add(exc.reason, data, queue=queue)
            logger.error("malformed message kept as dead letter %s: %s", letter.id, exc.reason)
            return []
        wanted = registry.matching(message, only)
    sent: list[str] = []
    not_sent: list[str] = []
    written = [
        listener for listener in wanted if taker is not None and taker.writes_for(listener.task)
    ]
    if written and taker is not None:
        try:
            taker.send(
                (
                    listener.task.name,
                    listener_task_id(message.task_id, listener.name),
                    message.as_dict(),
                    listener.queue,
                )
                for listener in written
            )
        except (redis.RedisError, OSError):
            logger.exception("event %s not sent to listeners %s", message.event_id, written)
            not_sent.extend(listener.name for listener in written)
        else:
            sent.extend(listener.name for listener in written)
    for listener in wanted:
        if listener in written:
            continue
        try:
            listener.task.apply_async(
                args=(message.as_dict(),),
                task_id=listener_task_id(message.task_id, listener.name),
                queue=listener.queue,
            )
        except (KombuError, redis.RedisError, OSError):
            logger.exception("event %s not sent to listener %s", message.event_id, listener.name)
            not_sent.append(listener.name)
        else:
            sent.append(listener.name)
    logger.info(
        "event %s (%s %s) sent to %d listeners: %s",
        message.event_id,
        message.action,
        message.resource_name,
        len(sent),
        ", ".join(sent) or "none",
    )
    if not_sent:
        raise ListenersNotSent(not_sent)
    return sent


#: How many messages one dispatch task takes after its own, at most (more when a batch listener
#: asks for larger batches), and for how long: a tenth of the visibility timeout, after which
#: the messages taken and not handled yet go back to their queue.
TAKE_AT_MOST = 100
TAKE_FOR = 0.1  # of the visibility timeout
#: How many bytes of messages one round of taking holds at most (and the first one whatever its
#: size). With at most BATCH_BYTES in each batch listener's batch (tasks/listeners/batch.py), this
#: bounds the messages one run holds, whatever the size of the event whose parts it takes.
TAKE_BYTES = 1 << 20

# What the broker raises when it does not take a task.
_SEND_ERRORS = (KombuError, redis.RedisError, OSError)


def taker() -> Taker | None:
    """The taker of this worker's broker (None: dispatch takes no more than its own message)."""
    return taker_of(app)


# A pool process lost while running a listener's first attempt (tasks/dispatch/inline.py) has
# dispatch
# retried at once, as the listener's own task would be, not after Celery's default 3 minutes.
@app.task(name=DISPATCH_TASK, bind=True, max_retries=DISPATCH_RETRIES, default_retry_delay=0)
def dispatch(self: Task[Any, Any], message: Any, only: list[str] | None = None) -> list[str]:
    """Run every listener that wants ``message``; then take the next dispatch messages of its
    queue and do the same for each (tasks/broker/taking.py); try again for the listeners it could
    not reach."""
    delivery_info = getattr(self.request, "delivery_info", None) or {}
    own = Delivery(
        message,
        only,
        retries=self.request.retries or 0,
        redelivered=bool(delivery_info.get("redelivered")),
        task_id=self.request.id,
    )
    queue = _queue_of(self)
    run = DispatchRun(registry, dead_letters(), queue, taker() if queue is not None else None)
    try:
        sent = run.handle(own)
        if not own.not_sent:
            run.take_more()
        run.finish()
    finally:
        run.give_up()
    if own.not_sent:
        countdown = dispatch_countdown(self.request.retries)
        exc = ListenersNotSent(own.not_sent)
        raise self.retry(kwargs={"only": own.not_sent}, countdown=countdown, exc=exc) from None
    return sent


class DispatchRun:
    """One run of the dispatch task: its own message, and those it takes after it.

    Each message is handled as the dispatch task handles one: its first attempt run here when
    one listener alone wants it (tasks/dispatch/inline.py), else one task per listener; the events
    of batch listeners are collected into one task per listener (tasks/listeners/batch.py). A taken
    message is acknowledged once every listener it has was sent (or run) and its batches were
    sent; one that some listener could not be sent is sent again to dispatch, for those
    listeners only, as the dispatch task retries.
    """

    def __init__(
        self,
        registry: Registry,
        dead_letters: DeadLetters,
        queue: str | None,
        taker: Taker | None = None,
    ) -> None:
        self.registry = registry
        self.dead_letters = dead_letters
        self.queue = queue
        self.batches = Batches(self._send_batch, _SEND_ERRORS)
        self.taker = taker
        self.taken: list[Delivery] = []  # taken, not acknowledged yet
        self.started = time.monotonic()

    def handle(self, delivery: Delivery) -> list[str]:
        """Send (or run) ``delivery``'s message to every listener that wants it; return their
        names. The listeners the broker did not take are added to ``delivery.not_sent``."""
        data, only = delivery.message, delivery.only
        try:
            message = decode(data)
        except MalformedMessage:
            return fan_out(data, self.registry, self.dead_letters, only, queue=self.queue)
        wanted = self.registry.matching(message, only)
        # Listeners that other live workers know and this one lacks get it too
        # (tasks/dispatch/coverage.py);
        # a retry for some of this worker's listeners did that already.
        elsewhere = []
        if only is None:
            elsewhere = coverage(self.registry, self.dead_letters).cover(
                message, data, wanted, self.queue
            )
        listeners, in_batches = [], []
        for listener in wanted:
            if listener.batch is None:
                listeners.append(listener)
            else:
                self.batches.add(listener, delivery, data, message.task_id)
                in_batches.append(listener.name)
        alone = [listener.name for listener in listeners]
        if not alone:
            return in_batches + elsewhere
        try:
            again = bool(delivery.retries or delivery.redelivered)
            ran = run_alone(
                data,
                self.registry,
                self.dead_letters,
                only,
                again=again,
                decoded=(message, listeners),
            )
            if ran is None:
                ran = fan_out(
                    data,
                    self.registry,
                    self.dead_letters,
                    alone,
                    self.queue,
                    self.taker,
                    decoded=(message, listeners),
                )
        except ListenersNotSent as exc:
            delivery.not_sent.extend(exc.listeners)
            ran = [name for name in alone if name not in exc.listeners]
        return ran + in_batches + elsewhere

    def take_more(self) -> None:
        """Take the next dispatch messages of the queue and handle each, within the bounds.

        Never raises: taking more is for speed, and whatever goes wrong in it leaves the run's
        own message and what it handled to :meth:`finish`. A taken message whose handling
        raised is left to the broker's sweep; those of its round not handled yet are given
        back."""
        taker = self.taker
        if taker is None or self.queue is None:
            return
        try:
            self._take_more(taker, self.queue)
        except (redis.RedisError, OSError):
            logger.warning("could not take more messages from %s", self.queue, exc_info=True)
        except Exception:
            # The one broad except here: the boundary that must not fail the dispatch task.
            logger.exception("taking more messages from %s stopped", self.queue)

    def _take_more(self, taker: Taker, queue: str) -> None:
        largest_batch = max((listener.batch or 0 for listener in self.registry), default=0)
        limit = max(TAKE_AT_MOST, largest_batch) - 1  # its own message is one
        deadline = self.started + taker.visibility_timeout * TAKE_FOR
        count = 0
        while count < limit and time.monotonic() < deadline:
            taken = taker.take(queue, limit - count, TAKE_BYTES)
            if not taken:
                return
            count += len(taken)
            readable = [item for item in taken if item.problem is None]
            # First, so that nothing kombu's sweep cannot read stays unacknowledged for long.
            if not self._keep_unreadable([item for item in taken if item.problem is not None]):
                self._give_back(readable)
                return
            for index, item in enumerate(readable):
                if time.monotonic() >= deadline:
                    self._give_back(readable[index:])
                    return
                delivery = Delivery(
                    item.message,
                    item.only,
                    retries=item.retries,
                    redelivered=item.redelivered,
                    task_id=item.task_id,
                    tag=item.tag,
                    size=item.size,
                )
                self.taken.append(delivery)
                try:
                    self.handle(delivery)
                except BaseException:
                    # Left unacknowledged, for the sweep; the rest of the round given back.
                    self.taken.remove(delivery)
                    taker.release([item.tag])
                    self._give_back(readable[index + 1 :])
                    raise
            self._settle()

    def finish(self) -> None:
        """Send the batches not full yet, and acknowledge what is handled."""
        self.batches.send_all()
        self._settle()

    def give_up(self) -> None:
        """Stop holding the taken messages left (an error cut the run short): the broker's
        sweep hands them out again after the visibility timeout."""
        if self.taker is not None and self.taken:
            self.taker.release(delivery.tag for delivery in self.taken if delivery.tag)
            logger.warning(
                "%d messages taken from %s left to be handed out again", len(self.taken), self.queue
            )
            self.taken = []

    def _settle(self) -> None:
        # Acknowledge each taken message fully handled; send again those with listeners missed.
        assert self.taker is not None or not self.taken
        done, left = [], []
        for delivery in self.taken:
            if delivery.pending:
                left.append(delivery)
            elif not delivery.not_sent or self._send_again(delivery):
                done.append(delivery)
            elif self.taker is not None and delivery.tag:
                # Neither sent nor sent again: left in the broker's hands, handed out again
                # after the visibility timeout, whole.
                self.taker.release([delivery.tag])
        self.taken = left
        if done and self.taker is not None:
            try:
                self.taker.ack(delivery.tag for delivery in done if delivery.tag)
            except (redis.RedisError, OSError):
                # Handled, yet handed out again after the visibility timeout: at least once.
                logger.warning("could not acknowledge %d messages taken", len(done), exc_info=True)
                self.taker.release(delivery.tag for delivery in done if delivery.tag)

    def _send_again(self, delivery: Delivery) -> bool:
        # What the dispatch task's retry does for a message it took: ``only`` the listeners
        # missed, with its backoff; after the last retry, they go to the dead letters.
        listeners = delivery.not_sent
        if delivery.retries >= DISPATCH_RETRIES:
            for name in listeners:
                self.dead_letters.add(
                    f"ListenersNotSent: {ListenersNotSent(listeners)}",
                    delivery.message,
                    listener=name,
                    attempts=delivery.retries + 1,
                    queue=self.queue,
                )
            logger.error("event %s not sent to %s for good", delivery.task_id, listeners)
            return True
        try:
            dispatch.apply_async(
                args=(delivery.message,),
                kwargs={"only": listeners},
                task_id=delivery.task_id,
                queue=self.queue or DEFAULT_QUEUE,
                countdown=dispatch_countdown(delivery.retries),
                retries=delivery.retries + 1,  # type: ignore[call-arg]  # a message option
            )
        except _SEND_ERRORS:
            logger.exception("event %s: dispatch could not be sent again", delivery.task_id)
            return False
        return True

    def _give_back(self, items: list[Taken]) -> None:
        assert self.taker is not None
        try:
            self.taker.give_back(self.queue or "", items)
        except (redis.RedisError, OSError):
            # Still unacknowledged: handed out again after the visibility timeout.
            self.taker.release(item.tag for item in items)
            logger.warning("could not give back %d messages taken", len(items), exc_info=True)

    def _keep_unreadable(self, items: list[Taken]) -> bool:
        # Keep each as a dead letter and acknowledge it at once; False: the dead letters are
        # out of reach, and the items went back to their queue (the sweep must not meet them).
        assert self.taker is not None
        if not items:
            return True
        try:
            for item in items:
                self._keep_one_unreadable(item)
        except (redis.RedisError, OSError):
            logger.exception("could not keep %d unreadable messages taken", len(items))
            self._give_back(items)  # those kept twice, at worst
            return False
        try:
            self.taker.ack(item.tag for item in items)
        except (redis.RedisError, OSError):
            logger.exception("could not acknowledge %d unreadable messages taken", len(items))
            self.taker.release(item.tag for item in items)
        return True

    def _keep_one_unreadable(self, item: Taken) -> None:
        reason = f"queue {self.queue!r}: an invalid dispatch task message: {item.problem}"
        envelope = item.envelope
        if isinstance(envelope, dict):
            kept: Any = {
                "headers": envelope.get("headers"),
                "content_type": envelope.get("content-type"),
                "content_encoding": envelope.get("content-encoding"),
                "body": envelope.get("body"),
            }
        else:
            raw = item.raw
            kept = {"item": raw.decode(errors="replace") if isinstance(raw, bytes) else raw}
        letter = self.dead_letters.add(reason, kept, queue=self.queue)
        logger.error("%s; kept as dead letter %s", reason, letter.id)

    def _send_batch(self, listener: Listener, messages: Any, task_id: str) -> None:
        if self.taker is not None and self.taker.writes_for(listener.task):
            self.taker.send([(listener.task.name, task_id, messages, listener.queue)])
        else:
            listener.task.apply_async(args=(messages,), task_id=task_id, queue=listener.queue)


def _queue_of(task: Any) -> str | None:
    # The queue the running task was taken from: Celery's routing key, our queue names.
    delivery_info = getattr(task.request, "delivery_info", None) or {}
    queue = delivery_info.get("routing_key")
    return queue if isinstance(queue, str) else None


#: How many deliveries of a listener's message a worker's death may add to its attempts
#: (``max_retries`` + 1) before the message goes to the dead letters. A pool process's death
#: already counts as an attempt; this bounds the deaths of a whole worker (SIGKILL, OOM), after
#: which the Redis transport hands the message out again without counting.
EXTRA_DELIVERIES = 1

#: The message header in which a listener's task sent back to its queue unrun (an ordered
#: listener whose objects were busy) carries the redeliveries its message had.
REDELIVERIES_HEADER = "notifier_redeliveries"


def within_deliveries(task: Any, message: Any) -> bool:
    """Whether this delivery of a listener's message may run: past its attempts and
    :data:`EXTRA_DELIVERIES`, the message is kept as a dead letter instead.

    A delivery is the task's attempt (its ``retries`` + 1) plus the redeliveries its message had:
    the Redis transport marks a message it hands out again (its worker died holding it)
    ``redelivered``, and each of those is counted in the dead letters' Redis until the
    message's run ends (:func:`_end_count`). A first delivery reads and writes nothing there."""
    request = getattr(task, "request", None)
    task_id = getattr(request, "id", None)
    if not task_id:
        return True  # called directly, not by a worker
    retries = getattr(request, "retries", None) or 0
    redeliveries = _carried(request)
    if _redelivered(request) or retries:
        try:
            if _redelivered(request):
                redeliveries += dead_letters().count_redelivery(task_id)
            else:
                redeliveries += dead_letters().redeliveries(task_id)
        except (redis.RedisError, OSError):
            return True  # cannot count: rather run it once more than lose it
    deliveries = retries + 1 + redeliveries
    limit = (getattr(task, "max_retries", None) or 0) + 1 + EXTRA_DELIVERIES
    if deliveries <= limit:
        return True
    listener = next((entry.name for entry in registry if entry.task.name == task.name), task.name)
    letter = dead_letters().add(
        f"delivered {deliveries} times without finishing: its worker died each time",
        message,
        listener=listener,
        attempts=deliveries - 1,
        queue=_queue_of(task),
    )
    logger.error("%s: its worker died each time; kept as dead letter %s", listener, letter.id)
    # Its run ends here; a count left behind would lapse.
    with contextlib.suppress(redis.RedisError, OSError):
        dead_letters().forget_redeliveries(task_id)
    return False


def forget_delivery(task: Any) -> dict[str, int]:
    """The message headers of a listener's task sent back to its queue unrun (an ordered
    listener whose objects were busy): that delivery was not an attempt, and the task sent
    back carries the redeliveries its message had, so that the bound holds. Their count in
    Redis ends with this run, as any count does."""
    request = getattr(task, "request", None)
    task_id = getattr(request, "id", None)
    redeliveries = _carried(request)
    if task_id and (_redelivered(request) or getattr(request, "retries", None)):
        # When Redis is out of reach, the count stays there (unless the end of this run can
        # delete it): the task sent back adds its own redeliveries to it.
        with contextlib.suppress(redis.RedisError, OSError):
            redeliveries += dead_letters().redeliveries(task_id)
    return {REDELIVERIES_HEADER: redeliveries} if redeliveries else {}


def _redelivered(request: Any) -> bool:
    # kombu's Redis transport marks a message it restores to its queue (its properties'
    # delivery_info; checked with kombu 5.7), and Celery's request passes the mark on.
    delivery_info = getattr(request, "delivery_info", None) or {}
    return bool(delivery_info.get("redelivered"))


def _carried(request: Any) -> int:
    # The redeliveries a task sent back to its queue carries (Celery's request.headers: the
    # message's headers of its own).
    headers = getattr(request, "headers", None) or {}
    count = headers.get(REDELIVERIES_HEADER) if isinstance(headers, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


@signals.task_postrun.connect
def _end_count_after_run(
    sender: Any = None,
    task_id: str | None = None,
    state: str | None = None,
    retval: Any = None,
    **signal_kwargs: Any,
) -> None:
    # Sent after each run in a pool process. A run that Celery retries, or that a Reject
    # requeues, goes on: so does its count. A failure is task_failure's (below).
    requeued = state == states.REJECTED and getattr(retval, "requeue", False)
    if state in (states.RETRY, states.FAILURE) or requeued:
        return
    _end_count(sender, task_id)


@signals.task_failure.connect
def _end_count_after_failure(
    sender: Any = None, task_id: str | None = None, **signal_kwargs: Any
) -> None:
    # Sent once a task failed for good: by its pool process, or by the worker for a pool
    # process lost on the last attempt.
    _end_count(sender, task_id)


def _end_count(task: Any, task_id: str | None) -> None:
    # Delete the redelivery count of a listener's message whose run ended: only a redelivery or
    # a retry can have one, so a first delivery costs nothing here either.
    request = getattr(task, "request", None)
    if not task_id or not (_redelivered(request) or getattr(request, "retries", None)):
        return
    name = getattr(task, "name", None)
    if not any(listener.task.name == name for listener in registry):
        return
    try:
        dead_letters().forget_redeliveries(task_id)
    except (redis.RedisError, OSError):
        logger.warning("could not delete the redelivery count of %s: it lapses", task_id)


registry.may_run = within_deliveries
registry.order_guard = order_guard
registry.on_defer = forget_delivery


@signals.task_failure.connect
def _keep_failed_message(
    sender: Any = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **signal_kwargs: Any,
) -> None:
    # Sent once a task failed for good (its retries, if any, are spent).
    name = getattr(sender, "name", None)
    failed: list[str | None]
    if name == DISPATCH_TASK:
        # The listeners dispatch could not reach; or none in particular, for a message that
        # dispatch could not even take (wrong arguments, for one).
        failed = list(exception.listeners) if isinstance(exception, ListenersNotSent) else [None]
    else:
        failed = [listener.name for listener in registry if listener.task.name == name]
    if not failed:
        return
    # The message as it came, or the arguments it came with when they are not one message.
    message = args[0] if args and len(args) == 1 else {"args": args, "kwargs": kwargs}
    # The task's request is still the failed run's: its retries are the attempts before it.
    retries = getattr(sender.request, "retries", None)
    for listener_name in failed:
        try:
            letter = dead_letters().add(
                f"{type(exception).__name__}: {exception}",
                message,
                listener=listener_name,
                attempts=retries + 1 if isinstance(retries, int) else None,
                queue=_queue_of(sender),
                traceback=str(einfo) if einfo is not None else None,
            )
        except (redis.RedisError, OSError):
            # The last place the message is: say it whole, so that it can be sent again.
            logger.critical(
                "%s failed for good and the dead letters are out of reach; its message: %s",
                listener_name or name,
                json.dumps(message, default=repr),
                exc_info=True,
            )
            continue
        logger.error("%s failed for good: kept as dead letter %s", listener_name or name, letter.id)
