"""Signalling's spans in a session's join trace (docs/observability.md, "Join trace").

The player's session token carries the trace (claim ``tp``, set by the matchmaker), so
these spans are children of the session's ``pixelfleet.join`` span though it was made in
another process:

- ``signaling.connect``: the WebSocket upgrade to the greeting (``config``) sent, with a
  ``reconnect`` event when this node already had a socket of the session;
- ``signaling.negotiate``: the greeting to the player's SDP answer, which signalling
  relays to the streamer (subscribe, the streamer's offer, ICE on the way).

While a traced player's socket is open, its log lines carry the trace id. Nothing here
runs unless tracing is on and the token names a trace; streamers are never traced.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from pixelfleet import tracing
from pixelfleet.tokens import SessionClaims

NAME = "pixelfleet.signaling"
_SEEN_MAX = 10_000
_seen: dict[str, None] = {}  # sessions this process had a socket of (oldest first): reconnects


def _first_time(session_id: str) -> bool:
    if session_id in _seen:
        return False
    if len(_seen) >= _SEEN_MAX:
        del _seen[next(iter(_seen))]
    _seen[session_id] = None
    return True


class PlayerTrace:
    """One player socket's spans; ``waiting`` while the answer has not been seen."""

    __slots__ = ("_parent", "_connect", "_negotiate", "_attached", "waiting")

    def __init__(self, parent: otel_context.Context, connect: Span, attached: object) -> None:
        self._parent = parent
        self._connect: Span | None = connect
        self._negotiate: Span | None = None
        self._attached = attached
        self.waiting = True

    @classmethod
    def start(cls, claims: SessionClaims, upgrade_at: float) -> PlayerTrace | None:
        """``upgrade_at``: Unix time the upgrade request arrived. None when not traced."""
        if not tracing.enabled():
            return None
        parent = tracing.parent_context(claims.trace)
        if parent is None:
            return None
        span = tracing.tracer(NAME).start_span(
            "signaling.connect", context=parent, kind=SpanKind.SERVER, start_time=tracing.ns(upgrade_at)
        )
        span.set_attributes({"pixelfleet.session": claims.session_id, "pixelfleet.streamer": claims.streamer_id})
        if not _first_time(claims.session_id):
            span.add_event("reconnect", {"pixelfleet.session": claims.session_id})
        # This socket's task logs inside the session's trace from here on.
        attached = otel_context.attach(trace.set_span_in_context(span, parent))
        return cls(parent, span, attached)

    def greeted(self) -> None:
        """The greeting is out: the connect span ends, negotiation begins."""
        if self._connect is not None:
            self._connect.end()
            self._connect = None
            self._negotiate = tracing.tracer(NAME).start_span("signaling.negotiate", context=self._parent)

    def saw(self, message: Any) -> None:
        """A message from the player: its ``answer`` ends the negotiation."""
        if isinstance(message, dict) and message.get("type") == "answer" and self._negotiate is not None:
            self._negotiate.add_event("answer")
            self._negotiate.end()
            self._negotiate = None
            self.waiting = False

    def close(self, code: int | None) -> None:
        """The socket closed: a span still open ends as an error (the join broke off there)."""
        for span in (self._connect, self._negotiate):
            if span is not None:
                span.set_status(Status(StatusCode.ERROR, f"socket closed ({code})"))
                span.end()
        self._connect = self._negotiate = None
        self.waiting = False
        try:
            otel_context.detach(self._attached)  # type: ignore[arg-type]
        except ValueError:  # detached in another context (never here): nothing to undo
            pass
