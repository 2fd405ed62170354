"""One run of the dispatch task: its own message, and the dispatch messages it takes after it.

Each message is handled as the dispatch task handles one: decoded once (a malformed one is
dead-lettered with the reason); the first attempt of each listener that may run in dispatch run
here, one after another (:mod:`tasks.dispatch.inline`), and one task sent to each of the others
(:mod:`tasks.dispatch.fan_out`); the events of batch listeners collected into one task per
listener (:mod:`tasks.dispatch.batches`); and handed to the listeners that other live workers
know and this one lacks (:mod:`tasks.dispatch.coverage`). A taken message is acknowledged once
every listener it has was sent or run and its batches were sent; one that some listener could
not be sent is sent again to dispatch, for those listeners only, as the dispatch task retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Task, states

from notifier.errors import ListenersNotSent, MalformedMessage
from notifier.wire.logs import log_fields
from notifier.wire.message import DISPATCH_TASK, decode
from notifier.wire.protocol import argsrepr
from notifier.wire.routing import DEFAULT_QUEUE
from notifier.wire.trace_context import attached
from tasks.broker.taking import Taken, Taker
from tasks.broker.tracing import Traced
from tasks.broker.worker_view import shared
from tasks.dead_letters import DeadLetters
from tasks.dispatch.batches import Batches
from tasks.dispatch.coverage import Coverage
from tasks.dispatch.delivery import Delivery
from tasks.dispatch.failures import KeptAsDeadLetter, dead_letter_unreadable
from tasks.dispatch.fan_out import SEND_ERRORS, RoundSends, fan_out
from tasks.dispatch.inline import Inline, hand_over, run_here
from tasks.dispatch.pace import Pace
from tasks.dispatch.retries import DISPATCH_RETRIES, dispatch_countdown
from tasks.dispatch.task_events import TaskEvents, events_of
from tasks.listeners.registry import Listener, Registry
from tasks.metrics import WorkerMetrics

__all__ = ["LINGER", "TAKE_AT_MOST", "TAKE_BYTES", "TAKE_FOR", "TAKE_POLL", "DispatchRun"]

logger = logging.getLogger("notifier")

#: How many messages one dispatch task takes after its own, at most (more when a batch listener
#: asks for larger batches), and for how long: a tenth of the visibility timeout, after which
#: the messages taken and not handled yet go back to their queue.
TAKE_AT_MOST = 100
TAKE_FOR = 0.1  # of the visibility timeout
#: How long the worker's runs wait for the next message once their queue is empty, by default
#: (NOTIFIER_DISPATCH_LINGER), and how often they look again meanwhile: a flow of events that
#: would each start a Celery task of its own (a few ms of the worker's CPU each, where taking
#: one costs a tenth of that) is taken by few runs.
LINGER = 0.02
TAKE_POLL = 0.002
#: How many bytes of messages one round of taking holds at most (and the first one whatever its
#: size). With at most BATCH_BYTES in each batch listener's batch (tasks/dispatch/batches.py),
#: this bounds the messages one run holds, whatever the size of the event whose parts it takes.
TAKE_BYTES = 1 << 20


class DispatchRun:
    """One run of the dispatch task over messages of ``queue`` (see the module's doc).

    ``registry``'s listeners get the messages; ``dead_letters`` take what cannot be handled;
    ``taker`` (the broker's, or None) takes more messages and writes listener tasks in one round
    trip; ``coverage`` (the worker's; None: none) hands messages to the listeners of other
    workers; ``inline`` (the worker's; default: one of its own) says which listeners run here;
    ``dispatch`` (the dispatch task; default: the one of ``registry``'s app) is sent again for
    the listeners a taken message missed; ``hostname`` names the worker in the runs' requests;
    ``metrics`` (the worker's, when it serves them) counts the messages handled; ``clock`` times
    the taking. The dispatch task gives the collaborators
    :func:`tasks.wiring.wire` built.
    """

    def __init__(
        self,
        registry: Registry,
        dead_letters: DeadLetters,
        queue: str | None,
        taker: Taker | None = None,
        *,
        coverage: Coverage | None = None,
        inline: Inline | None = None,
        dispatch: Task[Any, Any] | None = None,
        hostname: str | None = None,
        linger: float = 0.0,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.registry = registry
        self.dead_letters = dead_letters
        self.queue = queue
        self.taker = taker
        self.coverage = coverage
        # Without the worker's (whose pace its run wrappers feed), no listener runs here.
        self.inline = inline if inline is not None else Inline(Pace(budget=0))
        self.dispatch = dispatch
        self.hostname = hostname
        # Listeners run here until half the dispatch task's soft time limit is spent; after it,
        # those left of a message get tasks of their own.
        soft = registry.app.conf.task_soft_time_limit
        self.inline_until = clock() + soft / 2 if soft else None
        self.batches = Batches(self._send_batch, SEND_ERRORS)
        # The tasks the taker writes for the messages taken, sent once per round.
        self.round_sends = RoundSends(taker) if taker is not None else None
        self.clock = clock
        self.linger = linger
        self.metrics = metrics
        self.sleep = sleep
        self.taken: list[Delivery] = []  # taken, not acknowledged yet
        # The taken messages whose task events are on: what ran, and how long it took.
        self._ending: list[tuple[Delivery, list[str], float]] = []
        self.events = events_of(registry.app)
        self.started = clock()

    def handle(self, delivery: Delivery) -> list[str]:
        """Send (or run) ``delivery``'s message to every listener that wants it; return their
        names. The listeners the broker did not take are added to ``delivery.not_sent``."""
        data, only = delivery.message, delivery.only
        try:
            message = decode(data)
        except MalformedMessage as exc:
            letter = self.dead_letters.add(exc.reason, data, queue=self.queue)
            logger.error(
                "malformed message kept as dead letter %s: %s",
                letter.id,
                exc.reason,
                extra=log_fields(delivery.task_id, None, self.queue),
            )
            delivery.dead_letter = letter.id
            return []
        if only is None and self.metrics is not None:  # not a retry for some listeners
            self.metrics.received(self.queue)
        wanted = self.registry.matching(message, only)
        # Listeners that other live workers know and this one lacks get it too; a retry for
        # some of this worker's listeners did that already.
        elsewhere = []
        if only is None and self.coverage is not None:
            elsewhere = self.coverage.cover(message, data, wanted, self.queue)
        listeners: list[Listener] = []
        in_batches = []
        for listener in wanted:
            if listener.batch is None:
                listeners.append(listener)
            else:
                self.batches.add(listener, delivery, data, message.task_id)
                in_batches.append(listener.name)
        if not listeners:
            return in_batches + elsewhere
        again = bool(delivery.retries or delivery.redelivered)
        where = self.inline.plan(listeners, again=again, only=only)
        sent = where.sent
        round_sends = self.round_sends
        if delivery.tag is not None and round_sends is not None:
            # A taken message's tasks that the taker writes go with its round's, in one round
            # trip before the round is acknowledged; the others are sent now.
            kept = [listener for listener in sent if round_sends.taker.writes_for(listener.task)]
            round_sends.add(delivery, message, kept)
            sent = [listener for listener in sent if listener not in kept]
            ran = [listener.name for listener in kept]
        else:
            ran = []
        # Their own tasks first: other processes run them while this one runs the others.
        ran += _noting_not_sent(delivery, sent, lambda: fan_out(message, sent, self.taker))
        handed = where.handed_over
        ran += _noting_not_sent(delivery, handed, lambda: hand_over(handed, data, message.task_id))
        here = where.here
        ran += _noting_not_sent(
            delivery,
            here,
            lambda: run_here(
                message,
                data,
                here,
                hostname=self.hostname,
                until=self.inline_until,
                clock=self.clock,
            ),
        )
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
        count, empty_since = 0, None
        while count < limit and self.clock() < deadline:
            taken = taker.take(queue, limit - count, TAKE_BYTES)
            if not taken:
                # An empty queue: wait ``linger`` for the next message before ending the run
                # (and its Celery task), so that a steady flow is taken by few runs.
                now = self.clock()
                empty_since = now if empty_since is None else empty_since
                if now - empty_since >= self.linger:
                    return
                self.sleep(TAKE_POLL)
                continue
            empty_since = None
            count += len(taken)
            readable = [item for item in taken if item.problem is None]
            unreadable = [item for item in taken if item.problem is not None]
            # First, so that nothing kombu's sweep cannot read stays unacknowledged for long.
            if not dead_letter_unreadable(taker, self.dead_letters, self.queue, unreadable):
                self._give_back(unreadable)  # those dead-lettered twice, at worst
                self._give_back(readable)
                return
            for index, item in enumerate(readable):
                if self.clock() >= deadline:
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
                    headers=item.envelope.get("headers")
                    if isinstance(item.envelope, dict)
                    else None,
                )
                self.taken.append(delivery)
                if item.task_id in shared.view().revoked:
                    # Dropped, as the worker drops a revoked task's message.
                    _revoked(self.events, item.task_id)
                    continue
                try:
                    # In the message's trace, not the dispatch task's (wire/trace_context.py).
                    with attached(delivery.headers):
                        self._handle_taken(delivery)
                except BaseException:
                    # Left unacknowledged, for the sweep; the rest of the round given back.
                    self.taken.remove(delivery)
                    if self.round_sends is not None:
                        self.round_sends.forget(delivery)
                    taker.release([item.tag])
                    self._give_back(readable[index + 1 :])
                    raise
            self._settle()

    def _handle_taken(self, delivery: Delivery) -> None:
        # Handle a taken message as its own dispatch task would be, to Celery's task events.
        events = self.events
        if not events.on:
            self.handle(delivery)
            return
        headers = delivery.headers or {}
        task_id = delivery.task_id or ""
        events.received(
            task_id,
            DISPATCH_TASK,
            argsrepr((delivery.message,)),
            parent_id=headers.get("parent_id"),
            root_id=headers.get("root_id"),
            retries=delivery.retries,
        )
        started = time.perf_counter()
        ran = self.handle(delivery)
        # Its end is told once the round settled it: acknowledged, sent again, or kept.
        self._ending.append((delivery, ran, time.perf_counter() - started))

    def finish(self) -> None:
        """Send the batches not full yet, and acknowledge what is handled."""
        self.batches.send_all()
        self._settle()

    def give_up(self) -> None:
        """Stop holding the taken messages left (an error cut the run short): the broker's
        sweep hands them out again after the visibility timeout."""
        if self.round_sends is not None:
            self.round_sends.forget()
        self._ending = []  # handed out again: their next run tells how they end
        if self.taker is not None and self.taken:
            self.taker.release(delivery.tag for delivery in self.taken if delivery.tag)
            logger.warning(
                "%d messages taken from %s left to be handed out again", len(self.taken), self.queue
            )
            self.taken = []

    def _settle(self) -> None:
        # Send the round's tasks; acknowledge each taken message fully handled; send again
        # those with listeners missed.
        assert self.taker is not None or not self.taken
        if self.round_sends is not None:
            self.round_sends.send()
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
        if self._ending:
            self._tell_ends(left)
        if done and self.taker is not None:
            try:
                self.taker.ack(delivery.tag for delivery in done if delivery.tag)
            except (redis.RedisError, OSError):
                # Handled, yet handed out again after the visibility timeout: at least once.
                logger.warning("could not acknowledge %d messages taken", len(done), exc_info=True)
                self.taker.release(delivery.tag for delivery in done if delivery.tag)

    def _tell_ends(self, left: list[Delivery]) -> None:
        # The end event of each taken message this round settled, as its own dispatch task's.
        ending, self._ending = self._ending, []
        for delivery, ran, runtime in ending:
            if any(delivery is other for other in left):
                self._ending.append((delivery, ran, runtime))  # a batch still holds it
            else:
                self.events.ended(delivery.task_id or "", _outcome(delivery, ran, runtime))

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
        dispatch = self.dispatch or self.registry.app.tasks[DISPATCH_TASK]
        try:
            dispatch.apply_async(
                args=(delivery.message,),
                kwargs={"only": listeners},
                task_id=delivery.task_id,
                queue=self.queue or DEFAULT_QUEUE,
                countdown=dispatch_countdown(delivery.retries),
                retries=delivery.retries + 1,  # type: ignore[call-arg]  # a message option
            )
        except SEND_ERRORS:
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

    def _send_batch(self, listener: Listener, messages: Any, task_id: str) -> None:
        if self.taker is not None and self.taker.writes_for(listener.task):
            # Sent by this run's own dispatch task, as apply_async inside it would say.
            request = getattr(self.dispatch, "request", None)
            parent_id = getattr(request, "id", None)
            self.taker.send([(listener.task.name, task_id, messages, listener.queue, parent_id)])
        else:
            listener.task.apply_async(args=(messages,), task_id=task_id, queue=listener.queue)


def _outcome(delivery: Delivery, ran: list[str], runtime: float) -> Traced:
    # How the handling of a taken message ends, as its own dispatch task would have.
    if delivery.dead_letter is not None:
        reason = f"a malformed message, kept as dead letter {delivery.dead_letter}"
        return Traced(states.FAILURE, KeptAsDeadLetter(reason, requeue=False), runtime=runtime)
    if delivery.not_sent:
        missed = ListenersNotSent(delivery.not_sent)
        # After its last retry, they went to the dead letters: it failed for good.
        state = states.FAILURE if delivery.retries >= DISPATCH_RETRIES else states.RETRY
        return Traced(state, missed, runtime=runtime)
    return Traced(states.SUCCESS, retval=ran, runtime=runtime)


def _revoked(events: TaskEvents, task_id: str) -> None:
    logger.info("dispatch %s was revoked: its message is dropped", task_id)
    if events.on:
        events.send("task-revoked", uuid=task_id, terminated=False, signum=None, expired=False)


def _noting_not_sent(
    delivery: Delivery, listeners: list[Listener], step: Callable[[], list[str]]
) -> list[str]:
    # The names of ``listeners`` that ``step`` sent or ran; those the broker did not take are
    # noted on ``delivery``, for dispatch to try again.
    try:
        return step()
    except ListenersNotSent as exc:
        delivery.not_sent.extend(exc.listeners)
        return [listener.name for listener in listeners if listener.name not in exc.listeners]
