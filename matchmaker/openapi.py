"""The matchmaker API's contract: every route declared once, and the OpenAPI 3.1 document
built from that table and the msgspec models the handlers encode and decode.

``matchmaker/http.py`` registers exactly these routes (by ``operation``) and serves the
document at ``GET /api/v1/openapi.json``; msgspec's JSON Schema (2020-12, the dialect of
OpenAPI 3.1) describes the bodies, so the document cannot drift from the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from matchmaker.models import (
    Assigned,
    DrainRequest,
    ErrorBody,
    EventAccepted,
    Heartbeat,
    HeartbeatReply,
    Host,
    HostRegistration,
    QueueListing,
    Session,
    SessionEvent,
    SessionEventBatch,
    SessionEventResults,
    SessionRequest,
    Slot,
    TicketCancelled,
    TicketReply,
    Waiting,
)

Auth = Literal["caller", "session", "report", "agent", "admin", "none"]

SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    # {} = no credential: anonymous callers, where PIXELFLEET_MATCHMAKER__ALLOW_ANONYMOUS is on.
    "caller": [{"callerJwt": []}, {}],
    "session": [{"sessionToken": []}],
    # Each item carries its session's own token; the header, once PIXELFLEET_REPORT_TOKEN is set.
    "report": [{"reportToken": []}, {}],
    "agent": [{"agentToken": []}],
    "admin": [{"adminToken": []}],
    "none": [],
}

SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "callerJwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A caller's JWT: RS256/ES256 from the identity provider (checked against "
        "PIXELFLEET_MATCHMAKER__CALLER_JWKS_URL, with CALLER_ISSUER and CALLER_AUDIENCE) or HS256 signed with "
        "PIXELFLEET_MATCHMAKER__CALLER_JWT_SECRET; with `exp`, a subject (`sub`) and a tenant claim "
        "(PIXELFLEET_MATCHMAKER__CALLER_TENANT_CLAIM, default `tenant`). Tickets and sessions belong to the "
        "subject. On GET the event stream also takes it as `?access_token=`.",
    },
    "sessionToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The session token of that very session (the `token` of its assignment; "
        "accepted after it expires).",
    },
    "reportToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Pixelfleet-Report-Token",
        "description": "Signalling's PIXELFLEET_REPORT_TOKEN: required with connect and disconnect reports once it "
        "is set on the matchmaker.",
    },
    "agentToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The host's own agent token (`pixelfleet agent-token`, bound to a host id and its tenants; "
        "PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET), or the fleet-wide PIXELFLEET_AGENT_TOKEN where no agent key "
        "is set (legacy).",
    },
    "adminToken": {"type": "http", "scheme": "bearer", "description": "PIXELFLEET_ADMIN_TOKEN."},
}

# What each error status means here; every route lists the ones it can answer.
ERROR_STATUSES: dict[int, str] = {
    400: "invalid_body (not JSON, a wrong type, an unknown field, a value out of range, or more than 256 items in "
    "a batch of session events) or "
    "signaling_url_refused (a registration's signaling_url is not in SIGNALING_URLS)",
    401: "unauthorized, invalid_token or token_expired: the credential is missing or wrong",
    403: "disabled (that token is not configured here), wrong_session (a token of another session), forbidden "
    "(an agent token of another host or tenant, or a dedicated tenant's pool mixed) or report_token_required "
    "(a connect/disconnect report without signalling's report token)",
    404: "unknown_app, unknown_host, unknown_session (also another caller's ticket) or not_waiting",
    409: "host_conflict: the host id is alive under another boot id",
    410: "session_ended: the session has ended; `end_reason` says why (final: do not retry)",
    413: "too_large: bodies are limited to 64 KiB",
    429: "queue_full (the queue of this tenant and app is at QUEUE_MAX_LENGTH), rate_limited or quota_exceeded",
    503: "backend_unavailable: the state store did not answer; retry",
}

TICKET_EVENTS = (
    "Server-sent events: `event: <status>` and `data: <JSON TicketReply>` for the ticket's status now and "
    "on every change (position, ETA), ending after the first event whose status is not `waiting`; a "
    "`: keepalive` comment line about every second in between. Closing the stream leaves the queue (with a "
    "client key: after QUEUE_REJOIN_GRACE_S)."
)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # under /api/v1, aiohttp's {name} syntax (the same as OpenAPI's)
    operation: str  # the handler's name in matchmaker/http.py, and the operationId
    summary: str
    auth: Auth
    replies: dict[int, tuple[Any, str]]  # status -> (model, description)
    errors: tuple[int, ...] = ()
    body: type[Any] | None = None
    events: bool = False  # the 200 reply is a text/event-stream of TicketReply
    tags: tuple[str, ...] = field(default=())


_STORE = (503,)
_BODY = (400, 413)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/sessions",
        "create_session",
        "A slot now (201), or a place in the queue (202)",
        "caller",
        {201: (Assigned, "assigned a slot"), 202: (Waiting, "queued; follow `events`")},
        (*_BODY, 401, 404, 429, *_STORE),
        body=SessionRequest,
        tags=("players",),
    ),
    Route(
        "POST",
        "/sessions/{session_id}/events",
        "session_event",
        "Report a connect, a leave, input activity or the player's first decoded frame",
        "session",
        {200: (EventAccepted, "taken")},
        (*_BODY, 401, 403, 410, *_STORE),
        body=SessionEvent,
        tags=("signalling",),
    ),
    Route(
        "POST",
        "/sessions/events",
        "session_events",
        "Report many sessions' events at once (each item with its session's token); an outcome per item",
        "report",
        {200: (SessionEventResults, "each item's outcome, in order")},
        (*_BODY, 403),
        body=SessionEventBatch,
        tags=("signalling",),
    ),
    Route(
        "GET",
        "/queue/{ticket_id}",
        "ticket_status",
        "A ticket's status (reading it also says that its client is still there)",
        "caller",
        {200: (TicketReply, "the ticket's status")},
        (401, 404, 429, *_STORE),
        tags=("players",),
    ),
    Route(
        "DELETE",
        "/queue/{ticket_id}",
        "cancel_ticket",
        "Leave the queue",
        "caller",
        {200: (TicketCancelled, "cancelled")},
        (401, 404, 429, *_STORE),
        tags=("players",),
    ),
    Route(
        "GET",
        "/queue/{ticket_id}/events",
        "ticket_events",
        "The ticket's status, live, until it leaves the queue",
        "caller",
        {200: (TicketReply, TICKET_EVENTS)},
        (401, 404, 429, *_STORE),
        events=True,
        tags=("players",),
    ),
    Route(
        "POST",
        "/hosts",
        "register_host",
        "Register a GPU host and its slots (idempotent for the same boot id)",
        "agent",
        {201: (Host, "registered")},
        (*_BODY, 401, 403, 409, *_STORE),
        body=HostRegistration,
        tags=("agents",),
    ),
    Route(
        "POST",
        "/hosts/{host_id}/heartbeat",
        "heartbeat",
        "Slot states and loads; the reply names the slots to reset",
        "agent",
        {200: (HeartbeatReply, "what the agent must do")},
        (*_BODY, 401, 403, 404, 409, *_STORE),
        body=Heartbeat,
        tags=("agents",),
    ),
    Route(
        "GET",
        "/admin/hosts",
        "admin_hosts",
        "Every registered host, dead ones too",
        "admin",
        {200: (list[Host], "hosts")},
        (401, 403, *_STORE),
        tags=("operators",),
    ),
    Route(
        "GET",
        "/admin/slots",
        "admin_slots",
        "Every slot and its state",
        "admin",
        {200: (list[Slot], "slots")},
        (401, 403, *_STORE),
        tags=("operators",),
    ),
    Route(
        "GET",
        "/admin/sessions",
        "admin_sessions",
        "Every session that has not ended",
        "admin",
        {200: (list[Session], "live sessions")},
        (401, 403, *_STORE),
        tags=("operators",),
    ),
    Route(
        "GET",
        "/admin/queue",
        "admin_queue",
        "Every non-empty queue and its waiting tickets",
        "admin",
        {200: (list[QueueListing], "queues")},
        (401, 403, *_STORE),
        tags=("operators",),
    ),
    Route(
        "POST",
        "/admin/hosts/{host_id}/drain",
        "admin_drain",
        "Drain a host (no new sessions; current ones finish), or take it back",
        "admin",
        {200: (Host, "the host")},
        (*_BODY, 401, 403, 404, *_STORE),
        body=DrainRequest,
        tags=("operators",),
    ),
    Route(
        "DELETE",
        "/admin/sessions/{session_id}",
        "admin_end_session",
        "End a live session now (end reason force_ended)",
        "admin",
        {200: (Session, "the ended session")},
        (401, 403, 404, *_STORE),
        tags=("operators",),
    ),
    Route(
        "GET",
        "/openapi.json",
        "openapi_document",
        "This document",
        "none",
        {200: (dict[str, Any], "the OpenAPI 3.1 document")},
        tags=("meta",),
    ),
)

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"\{(\w+)\}")


def build_document(version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``ROUTES`` (JSON-ready)."""
    models: list[Any] = [ErrorBody, TicketReply]
    for route in ROUTES:
        models += [model for model, _ in route.replies.values()]
        if route.body is not None:
            models.append(route.body)
    schemas, components = msgspec.json.schema_components(models, ref_template=_REF)
    schema_of = {_key(model): schema for model, schema in zip(models, schemas, strict=True)}
    components["TicketReply"] = schema_of[_key(TicketReply)]
    schema_of[_key(TicketReply)] = {"$ref": _REF.format(name="TicketReply")}
    error = schema_of[_key(ErrorBody)]
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "tags": list(route.tags),
            "security": SECURITY[route.auth],
            "responses": {},
        }
        params = _PARAM.findall(route.path)
        if params:
            op["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in params
            ]
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_of[_key(route.body)]}},
            }
        for status, (model, description) in route.replies.items():
            schema = schema_of[_key(model)]
            if route.events:
                content = {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "x-event-data": schema,  # each event's `data:` line; `event:` is its status
                    }
                }
            else:
                content = {"application/json": {"schema": schema}}
            op["responses"][str(status)] = {"description": description, "content": content}
        for status in route.errors:
            op["responses"][str(status)] = {
                "description": ERROR_STATUSES[status],
                "content": {"application/json": {"schema": error}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pixelfleet matchmaker",
            "version": version,
            "description": "Slots, the queue, session events, GPU hosts and operators. Reference: "
            "docs/matchmaker-api.md. Every error is an ErrorBody.",
        },
        "servers": [{"url": "/api/v1"}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


def _key(model: Any) -> str:
    return repr(model)
