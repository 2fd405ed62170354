"""notifier.wire.trace_context: with OpenTelemetry's Pyramid and Celery instrumentations, what a
listener does for a change is in the trace of the web request that made it, whichever path runs
it (in dispatch, or as a task of its own sent by the taker), and whichever message of a dispatch
run it is (the run's own, or one taken behind it). Spans go to an in-memory exporter; the broker
is fakeredis; the dispatch task runs through Celery's tracer, as a worker runs it."""

import json

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.pyramid import PyramidInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from notifier.publisher import CeleryPublisher
from notifier.wire.message import DISPATCH_TASK
from tasks.broker.tracing import trace
from tasks.dispatch.task import dispatch
from tasks.wiring import bind, collaborators
from tests.unit.builders import QUEUE
from tests.unit.test_request import make_app


@pytest.fixture(scope="module")
def exporter():
    """The in-memory exporter of the process's tracer provider (set once: OpenTelemetry's rule)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel_trace.set_tracer_provider(provider)
    return exporter


@pytest.fixture
def spans(exporter):
    """The spans the instrumented web app and worker end, in the order they end."""
    exporter.clear()
    PyramidInstrumentor().instrument()
    CeleryInstrumentor().instrument()
    yield exporter
    CeleryInstrumentor().uninstrument()
    PyramidInstrumentor().uninstrument()


@pytest.fixture
def web(monkeypatch, client):
    """The web side, publishing into the fake Redis as a Redis broker URL has it do."""

    def publisher(broker_url, timeout, timeline):
        made = CeleryPublisher("redis://127.0.0.1:1/0", timeout)
        made.client = client
        return made

    app, _, _ = make_app(monkeypatch, publisher=publisher, settings={"notifier.outbox": "false"})
    return app


@pytest.fixture
def worker(registry, dead_letters, order_guard, taker):
    """A worker's collaborators with its taker, bound to the worker's app (its dispatch task's)
    and the registry's: listeners whose runs average under 20 ms run in dispatch."""
    built = collaborators(registry, dead_letters, order_guard, taker, inline_budget=0.02)
    bind(registry.app, built)
    bind(dispatch.app, built)
    yield built
    del dispatch.app.notifier_collaborators


def ignore(event):
    return None


def run_dispatch(client):
    """Run the dispatch task on the oldest message of the queue, as a worker's pool does: its
    request is the message's headers; it takes the messages behind its own."""
    envelope = json.loads(client.rpop(QUEUE))
    headers = envelope["headers"]
    request = {**headers, "delivery_info": {"exchange": "", "routing_key": QUEUE}}
    [message] = json.loads(envelope["body"])[0]
    return trace(dispatch, headers["id"], (message,), request)


def traces_of(spans, kind, name):
    return [span.context.trace_id for span in spans if span.kind == kind and span.name == name]


def test_listeners_run_in_the_trace_of_the_request_that_changed_the_record(
    spans, web, worker, registry, client
):
    registry.listener("article", name="search.index")(ignore)
    registry.app.amqp.queues.select_add(registry["search.index"].queue)
    # A rate limit gives the mailer tasks of its own, which the taker writes.
    registry.listener("article", name="mail.new_article", rate_limit="10/s")(ignore)

    web.post("/create", status=201)
    web.post("/create", status=201)
    ran = run_dispatch(client)  # the first request's message, then the second's, taken

    assert ran.state == "SUCCESS"
    ended = spans.get_finished_spans()
    first, second = traces_of(ended, SpanKind.SERVER, "/create")
    assert traces_of(ended, SpanKind.CONSUMER, f"run/{DISPATCH_TASK}") == [first]
    # In dispatch: each message's listener run in its own request's trace.
    index_task = registry["search.index"].task.name
    assert traces_of(ended, SpanKind.CONSUMER, f"run/{index_task}") == [first, second]
    # A task of its own: its message carries its request's trace to the worker that runs it.
    mailer = registry["mail.new_article"]
    carried = [
        json.loads(item)["headers"]["traceparent"].split("-")[1]
        for item in reversed(client.lrange(mailer.queue, 0, -1))
    ]
    assert carried == [f"{first:032x}", f"{second:032x}"]
    assert traces_of(ended, SpanKind.PRODUCER, f"apply_async/{mailer.task.name}") == [
        first,
        second,
    ]


@pytest.fixture
def pyramid_only(exporter):
    """The spans of a web app with OpenTelemetry's Pyramid instrumentation alone."""
    exporter.clear()
    PyramidInstrumentor().instrument()
    yield exporter
    PyramidInstrumentor().uninstrument()


def test_without_celery_s_instrumentation_the_message_still_carries_the_request_s_trace(
    pyramid_only, web, client
):
    web.post("/create", status=201)

    [request] = [span for span in pyramid_only.get_finished_spans() if span.name == "/create"]
    headers = json.loads(client.rpop(QUEUE))["headers"]
    _, trace_id, span_id, _ = headers["traceparent"].split("-")
    assert (trace_id, span_id) == (
        f"{request.context.trace_id:032x}",
        f"{request.context.span_id:016x}",
    )


def test_without_a_span_a_message_carries_no_trace_context(web, client):
    web.post("/create", status=201)

    assert "traceparent" not in json.loads(client.rpop(QUEUE))["headers"]
