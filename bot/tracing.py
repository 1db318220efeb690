"""Traces over OTLP/HTTP through temporalio's TracingInterceptor, on only when an OTLP endpoint is set.

Off, nothing is imported or installed. On, the provider is private to the returned `Tracing`
(never the global one), so configuring twice in one process - tests - gives two independent
pipelines. Pass `Tracing.interceptors` to `Client.connect(interceptors=...)` only: workers built
from that client pick the interceptor up themselves, and passing it to `Worker` too would
record every activity and workflow span twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import structlog

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = structlog.get_logger(__name__)

TRACES_PATH = "v1/traces"


@dataclass
class Tracing:
    """A running trace pipeline: interceptors for the Temporal client, and a flush on the way out."""

    provider: TracerProvider
    interceptors: list[Any]  # [temporalio.contrib.opentelemetry.TracingInterceptor]
    endpoint: str
    _closed: bool = field(default=False, init=False, repr=False)

    def shutdown(self) -> None:
        """Export what is still buffered, then stop; later calls do nothing.

        Blocks for up to the exporter's timeout when the collector is slow: from async code call it
        through `asyncio.to_thread`.
        """
        if self._closed:
            return
        self._closed = True
        self.provider.shutdown()


def traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """Where spans go, as the OTLP/HTTP spec reads it: the per-signal URL as given, else the base + /v1/traces."""
    if url := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return url
    if base := environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        return f"{base.rstrip('/')}/{TRACES_PATH}"
    return None


def configure_tracing(service_name: str = "playbook-bot", environ: Mapping[str, str] | None = None) -> Tracing | None:
    """A Tracing exporting to the OTLP endpoint in `environ` (default os.environ), or None when none is set.

    Read from `environ`: the endpoint, headers, OTEL_SERVICE_NAME (over `service_name`),
    OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER=none. The SDK reads its
    other knobs (timeout, compression, TLS files, sampler, OTEL_BSP_*) from the process environment.
    """
    environ = os.environ if environ is None else environ
    endpoint = traces_endpoint(environ)
    if endpoint is None or _disabled(environ):
        return None

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.util.re import parse_env_headers
    from temporalio.contrib.opentelemetry import TracingInterceptor

    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip() != "http/protobuf":
        log.warning("only OTLP http/protobuf is installed: sending that", protocol=protocol, endpoint=endpoint)
    headers = parse_env_headers(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""),
        liberal=True,
    )
    provider = TracerProvider(resource=Resource.create(_resource_attributes(environ, service_name)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, headers=headers)))
    tracer = provider.get_tracer(TracingInterceptor.__module__)
    log.info("tracing on", endpoint=endpoint, service=provider.resource.attributes.get("service.name"))
    return Tracing(provider=provider, interceptors=[TracingInterceptor(tracer)], endpoint=endpoint)


def _disabled(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return True
    return "none" in {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}


def _resource_attributes(environ: Mapping[str, str], service_name: str) -> dict[str, str]:
    """The spec's precedence for the service name: OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES, then ours."""
    attributes = {"service.name": service_name}
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    if name := environ.get("OTEL_SERVICE_NAME", "").strip():
        attributes["service.name"] = name
    return attributes
