"""OpenTelemetry tracing, shared by the matchmaker and signalling (docs/observability.md).

Off unless ``PIXELFLEET_OTLP_ENDPOINT`` is set: then spans go to that OTLP/HTTP endpoint
(the exporter package is the ``otlp`` extra, imported only then). While off, nothing is
started and no trace context travels, so the join path costs nothing extra.

A session's trace crosses processes as one W3C ``traceparent`` string: the matchmaker
stores it on the ticket and the session and puts it in the session token (claim ``tp``),
so signalling and a later request about the session attach their spans to the same trace.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags, Tracer, TracerProvider

from pixelfleet.shared_settings import ConfigError

_provider: TracerProvider | None = None
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def enabled() -> bool:
    return _provider is not None


def use_provider(provider: TracerProvider | None) -> TracerProvider | None:
    """Trace into ``provider`` from now on (None: off). Returns the previous one, so a test
    with an in-memory exporter can put it back."""
    global _provider
    previous, _provider = _provider, provider
    return previous


def tracer(name: str) -> Tracer:
    """A tracer of the configured provider, or OpenTelemetry's no-op one when off."""
    return (_provider or trace.NoOpTracerProvider()).get_tracer(name)


def configure_tracing(endpoint: str | None, service: str) -> None:
    """Export spans to the OTLP/HTTP ``endpoint`` (e.g. ``http://collector:4318/v1/traces``),
    batched in the background; nothing when None."""
    if not endpoint:
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError:
        raise ConfigError(
            "PIXELFLEET_OTLP_ENDPOINT is set but the OTLP exporter is not installed: pip install 'pixelfleet[otlp]'"
        ) from None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = SdkProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use_provider(provider)


def traceparent(span: Span) -> str | None:
    """The W3C ``traceparent`` of ``span``; None for a span that records nothing."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def parent_context(value: str | None) -> Context | None:
    """A context whose current span is the remote one ``value`` names (None for None or junk:
    a bad ``tp`` claim only loses the trace, never the session)."""
    if not value:
        return None
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    trace_id, span_id = int(m.group(1), 16), int(m.group(2), 16)
    if not trace_id or not span_id:
        return None
    remote = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(m.group(3), 16)))
    return trace.set_span_in_context(NonRecordingSpan(remote))


def trace_id_of(value: str | None) -> str | None:
    """The trace id (32 hex digits) of a ``traceparent``, for log lines."""
    m = _TRACEPARENT.match(value or "")
    return m.group(1) if m else None


def add_trace_id(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: a line logged while a span is current carries its ``trace_id``."""
    if "trace_id" not in event:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event["trace_id"] = f"{ctx.trace_id:032x}"
    return event


def ns(seconds: float) -> int:
    """A Unix time in seconds as OpenTelemetry's nanoseconds."""
    return int(seconds * 1e9)
