"""Tracing: off without an OTLP endpoint; on, a real PlaybookRun's spans reach a fake OTLP/HTTP collector."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter

from bot.engine.worker import make_worker
from bot.engine.workflow import PlaybookRun
from bot.tracing import configure_tracing
from tests.engine.support import Recorder, playbook, run_input
from tests.http_server import serving

ONE_STEP = """
name: traced
steps:
  - id: one
    action: t.ok
    with: {n: 1}
"""


@dataclass
class Collector:
    """What a fake OTLP/HTTP collector received: every export request with its headers."""

    url: str
    requests: list[tuple[dict[str, str], ExportTraceServiceRequest]] = field(default_factory=list)

    def spans(self) -> list[tuple[str, dict[str, object], object]]:
        """(span name, resource attributes, span) for every span received."""
        found = []
        for _, request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((span.name, resource, span) for span in scope_spans.spans)
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    received: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            received.append(
                ({k.lower(): v for k, v in self.headers.items()}, ExportTraceServiceRequest.FromString(body))
            )
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield Collector(url=url, requests=received)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
        {"OTEL_SERVICE_NAME": "x", "OTEL_EXPORTER_OTLP_HEADERS": "a=b"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_off_without_an_endpoint_or_when_disabled(environ):
    assert configure_tracing(environ=environ) is None


def test_importing_costs_no_opentelemetry():
    code = "import sys, bot.tracing; print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'temporalio'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("environ", "endpoint"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b/otlp"},
            "http://b/otlp",
        ),
    ],
)
def test_endpoint_follows_the_otlp_spec(environ, endpoint):
    tracing = configure_tracing(environ=environ)
    assert tracing is not None
    try:
        assert tracing.endpoint == endpoint
        assert [type(i) for i in tracing.interceptors] == [TracingInterceptor]
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "service"),
    [
        ({}, "playbook-bot"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod"}, "from-attrs"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "from-env"}, "from-env"),
    ],
)
def test_service_name_precedence(environ, service):
    tracing = configure_tracing(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", **environ})
    assert tracing is not None
    try:
        assert tracing.provider.resource.attributes["service.name"] == service
    finally:
        tracing.shutdown()


async def test_a_run_is_traced_end_to_end(dev_env, collector):
    tracing = configure_tracing(
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken",
            "OTEL_SERVICE_NAME": "pb-test",
        }
    )
    assert tracing is not None
    try:
        # The interceptor goes on the client only: the worker built from it inherits it.
        client = await Client.connect(
            dev_env.client.service_client.config.target_host,
            namespace=dev_env.client.namespace,
            data_converter=pydantic_data_converter,
            interceptors=tracing.interceptors,
        )
        rec = Recorder()
        async with make_worker(client, f"tq-{uuid.uuid4()}", rec.activities()) as w:
            handle = await client.start_workflow(
                PlaybookRun.run, run_input(playbook(ONE_STEP)), id=f"run-{uuid.uuid4()}", task_queue=w.task_queue
            )
            status = await handle.result()
        assert status.state == "completed"
    finally:
        tracing.shutdown()
    tracing.shutdown()  # a second call is harmless

    spans = collector.spans()
    names = [name for name, _, _ in spans]
    assert {"StartWorkflow:PlaybookRun", "RunWorkflow:PlaybookRun", "RunActivity:t.ok"} <= set(names)
    assert names.count("RunActivity:t.ok") == 1  # not intercepted twice
    assert {resource["service.name"] for _, resource, _ in spans} == {"pb-test"}
    # one trace, from the client's start through the workflow to the activity
    assert len({span.trace_id for _, _, span in spans}) == 1
    assert {headers.get("authorization") for headers, _ in collector.requests} == {"Bearer t0ken"}
