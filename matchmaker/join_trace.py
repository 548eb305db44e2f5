"""The matchmaker's part of a session's join trace, and its recent join times.

One trace per session (docs/observability.md, "Join trace"):

- ``pixelfleet.join``: the ``POST /sessions`` request, the trace's root (this module's
  middleware); its ``traceparent`` rides on the request, the ticket, the session and the
  session token (claim ``tp``), so every later span is its child, in whatever process;
- ``matchmaker.queue_wait``: enqueued to served, by the replica whose dispatch served it;
- ``matchmaker.reattach``: a client took its session back (event ``reconnect``);
- signalling's ``signaling.connect`` and ``signaling.negotiate`` (signaling/join_trace.py);
- ``player.first_frame``: session created to the first decoded frame the page reported.

The root span covers the request only (a span is ended by the process that started it);
the later spans reach past its end. ``JoinTimes`` keeps the last hour's queue waits and
times to first frame of this replica for the operator dashboard's percentiles.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.trace import SpanKind, Status, StatusCode

from matchmaker.models import Session, Ticket
from pixelfleet import tracing

_tracer = tracing.tracer  # looked up per span: a test may swap the provider
NAME = "pixelfleet.matchmaker"
WINDOW_S = 3600.0
_MAX_SAMPLES = 100_000  # per kind: an hour of a very busy replica, bounded
_REPORTED_MAX = 50_000


@web.middleware
async def trace_joins(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``POST /sessions`` runs inside the root span of a new trace (when tracing is on)."""
    if not tracing.enabled() or request.method != "POST" or not request.path.endswith("/sessions"):
        return await handler(request)
    with _tracer(NAME).start_as_current_span(
        "pixelfleet.join", kind=SpanKind.SERVER, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            span.set_attribute("http.response.status_code", exc.status)
            span.set_status(Status(StatusCode.ERROR, exc.reason))
            raise
        span.set_attribute("http.response.status_code", response.status)
        span.set_attribute("pixelfleet.outcome", {201: "assigned", 202: "queued"}.get(response.status, "other"))
        return response


def current_traceparent() -> str | None:
    """The traceparent of the request's root span, to carry on the request (None: off)."""
    if not tracing.enabled():
        return None
    from opentelemetry import trace

    return tracing.traceparent(trace.get_current_span())


def annotate(event: str, **attributes: str | int | float) -> None:
    """A span event on the current request's span (nothing when not traced)."""
    if tracing.enabled():
        from opentelemetry import trace

        trace.get_current_span().add_event(event, attributes)


def queue_served(ticket: Ticket, session: Session, now: float) -> None:
    """``matchmaker.queue_wait``: the ticket's wait, in its join trace."""
    parent = tracing.parent_context(ticket.request.trace)
    if parent is None:
        return
    span = _tracer(NAME).start_span("matchmaker.queue_wait", context=parent, start_time=tracing.ns(ticket.enqueued_at))
    span.set_attributes(
        {
            "pixelfleet.tenant": ticket.request.tenant,
            "pixelfleet.app": ticket.request.app,
            "pixelfleet.session": session.session_id,
        }
    )
    span.end(end_time=tracing.ns(max(now, ticket.enqueued_at)))


def reattached(session: Session, now: float) -> None:
    """A client took its live session back (a reload, a reconnect): event ``reconnect``."""
    parent = tracing.parent_context(session.trace)
    if parent is None:
        return
    span = _tracer(NAME).start_span("matchmaker.reattach", context=parent, start_time=tracing.ns(now))
    span.add_event("reconnect", {"pixelfleet.session": session.session_id}, timestamp=tracing.ns(now))
    span.end(end_time=tracing.ns(now))


def first_frame(session: Session, now: float) -> None:
    """``player.first_frame``: from the session's creation to the frame the page reported."""
    parent = tracing.parent_context(session.trace)
    if parent is None:
        return
    span = _tracer(NAME).start_span("player.first_frame", context=parent, start_time=tracing.ns(session.created_at))
    span.set_attributes({"pixelfleet.app": session.app, "pixelfleet.region": session.region})
    span.end(end_time=tracing.ns(max(now, session.created_at)))


class JoinTimes:
    """This replica's queue waits and times to first frame of the last hour (the dashboard's
    percentiles), and which sessions already reported a first frame (counted once)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.waits: deque[tuple[float, float]] = deque(maxlen=_MAX_SAMPLES)  # (at, seconds)
        self.first_frames: deque[tuple[float, float]] = deque(maxlen=_MAX_SAMPLES)
        self._reported: dict[str, None] = {}  # insertion-ordered: the oldest goes first

    def waited(self, seconds: float) -> None:
        self.waits.append((self.clock(), seconds))

    def first_frame(self, session_id: str, seconds: float) -> bool:
        """Record it unless this session already did (a page reload reports again)."""
        if session_id in self._reported:
            return False
        if len(self._reported) >= _REPORTED_MAX:
            del self._reported[next(iter(self._reported))]
        self._reported[session_id] = None
        self.first_frames.append((self.clock(), seconds))
        return True

    def recent(self, samples: deque[tuple[float, float]], window_s: float = WINDOW_S) -> list[tuple[float, float]]:
        since = self.clock() - window_s
        while samples and samples[0][0] < since:
            samples.popleft()
        return list(samples)


def percentiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float | None]:
    """Nearest-rank percentiles (``p50`` ...); None when there is no sample."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{round(q * 100)}"
        out[key] = ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))] if ordered else None
    return out
