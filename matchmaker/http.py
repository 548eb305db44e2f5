"""The matchmaker's HTTP API (aiohttp).

Who may call what:
- players' backends or browsers: ``POST /api/v1/sessions`` and the queue endpoints with
  the caller's JWT (``Authorization: Bearer``; OIDC or HS256, ``matchmaker.auth``), or
  anonymously where ``allow_anonymous`` is on (development); a ticket and its session
  belong to the caller's subject (``matchmaker.guard``);
- signalling: session events with the session token it verified (connect and disconnect
  also with the report token, once configured);
- GPU agents: register and heartbeat with their host's agent token;
- operators: ``/api/v1/admin/*`` with the admin token.

Every failure is an ``ErrorBody`` (``{"error": <code>, "message": <text>}``; a 410 adds
``end_reason``) with a 4xx/5xx status; nothing reaches the store before the body has
been validated. The routes are ``matchmaker.openapi.ROUTES``; every body is a model of
``matchmaker.models``, which the OpenAPI document is built from (docs/matchmaker-api.md).
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from matchmaker import guard
from matchmaker import session_events as session_events_
from matchmaker.auth import CallerAuth, Refused, owned_client_key
from matchmaker.join_trace import trace_joins
from matchmaker.limits import Limits
from matchmaker.metrics import allocation_refusal
from matchmaker.models import (
    AllocationRequest,
    Assigned,
    DrainRequest,
    EndReason,
    ErrorBody,
    ErrorCode,
    EventAccepted,
    Heartbeat,
    HostRegistration,
    QueuedTicket,
    QueueListing,
    SessionEvent,
    SessionEventBatch,
    SessionEventResults,
    SessionRequest,
    TicketCancelled,
    TicketExpired,
    TicketReply,
    TicketServed,
    TicketState,
    Waiting,
)
from matchmaker.openapi import ROUTES, build_document
from matchmaker.service import (
    Allocation,
    Matchmaker,
    Queued,
    SessionEnded,
    TicketStatus,
    UnknownApp,
    UnknownSession,
)
from matchmaker.store import BackendUnavailable, HostConflict, NotReplicated, QueueFull, StoreError, UnknownHost
from matchmaker.streamer_creds import StreamerCredentials
from pixelfleet.audit import audit
from pixelfleet.oidc import Caller

MATCHMAKER = web.AppKey("matchmaker", Matchmaker)

_MAX_BODY = 64 * 1024
API_PREFIX = "/api/v1"


class ApiError(web.HTTPException):
    """Any API failure: a status and an ``ErrorBody``."""

    def __init__(self, status: int, code: ErrorCode, message: str, *, end_reason: EndReason | None = None) -> None:
        self.status_code = status
        body = ErrorBody(error=code, message=message, end_reason=end_reason)
        super().__init__(text=msgspec.json.encode(body).decode(), content_type="application/json")


_error = ApiError


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


async def _body(request: web.Request, cls: type[Any]) -> Any:
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise _error(413, "too_large", f"bodies are limited to {_MAX_BODY} bytes")
    # Every chunk until the end: read(n) returns whatever has arrived, so a body that
    # comes in several TCP segments (a 40 KB heartbeat on a busy host) was cut short.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > _MAX_BODY:
            raise _error(413, "too_large", f"bodies are limited to {_MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return msgspec.json.decode(raw or b"{}", type=cls)
    except msgspec.DecodeError as exc:
        raise _error(400, "invalid_body", str(exc)) from None


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _require_secret(request: web.Request, expected: str | None, what: str) -> None:
    presented = _bearer(request)
    if expected is None:
        raise Refused(403, "disabled", f"no {what} token is configured on this matchmaker")
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Refused(401, "unauthorized", f"a valid {what} token is required")


def assigned(a: Allocation, ticket_id: str | None = None) -> Assigned:
    return Assigned(
        session_id=a.session.session_id,
        streamer_id=a.session.streamer_id,
        signaling_url=a.session.signaling_url,
        token=a.token,
        region=a.session.region,
        idle_timeout_s=a.idle_timeout_s,
        ticket_id=ticket_id,
    )


def _events_path(ticket_id: str) -> str:
    return f"{API_PREFIX}/queue/{ticket_id}/events"


def ticket_reply(status: TicketStatus | Queued) -> TicketReply:
    ticket_id = status.ticket.ticket_id
    if isinstance(status, Queued):
        return Waiting(
            ticket_id=ticket_id, events=_events_path(ticket_id), position=status.position, eta_s=status.eta_s
        )
    if status.allocation is not None:
        return assigned(status.allocation, ticket_id)
    state, reason = status.ticket.state, status.ticket.reason
    if state is TicketState.WAITING:
        return Waiting(
            ticket_id=ticket_id, events=_events_path(ticket_id), position=status.position, eta_s=status.eta_s
        )
    if state is TicketState.SERVED:
        return TicketServed(ticket_id=ticket_id, reason=reason)
    if state is TicketState.CANCELLED:
        return TicketCancelled(ticket_id=ticket_id, reason=reason)
    return TicketExpired(ticket_id=ticket_id, reason=reason)


# Every store failure a client can see: (HTTP status, error code). The codes are part of
# the API (clients branch on them), so they are written out, never derived from class
# names; a unit test checks that every StoreError subclass is listed.
STORE_ERRORS: dict[type[StoreError], tuple[int, ErrorCode]] = {
    StoreError: (400, "store_error"),
    UnknownHost: (404, "unknown_host"),
    UnknownApp: (404, "unknown_app"),
    UnknownSession: (404, "unknown_session"),
    SessionEnded: (410, "session_ended"),
    HostConflict: (409, "host_conflict"),
    QueueFull: (429, "queue_full"),
    BackendUnavailable: (503, "backend_unavailable"),
    NotReplicated: (503, "backend_unavailable"),  # the message says why: no replica confirmed
}


def store_error_reply(exc: StoreError) -> tuple[int, ErrorCode]:
    """The nearest listed class wins, so an unlisted subclass still answers sensibly."""
    for cls in type(exc).__mro__:
        if issubclass(cls, StoreError) and cls in STORE_ERRORS:
            return STORE_ERRORS[cls]
    return STORE_ERRORS[StoreError]


@web.middleware
async def _store_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except Refused as exc:
        raise _error(exc.status, exc.code, str(exc)) from None  # type: ignore[arg-type]
    except StoreError as exc:
        status, code = store_error_reply(exc)
        raise _error(status, code, str(exc), end_reason=exc.reason if isinstance(exc, SessionEnded) else None) from None


# --- players ----------------------------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    mm = request.app[MATCHMAKER]
    who, source = await guard.caller(request, mm.settings)
    tenant = who.tenant
    body: SessionRequest = await _body(request, SessionRequest)
    fields = msgspec.structs.asdict(body)
    # The client key is the subject's own: another subject's same key is another key.
    fields["client_key"] = owned_client_key(who.subject, body.client_key)
    limits = request.app[guard.LIMITS]
    quota = await limits.admission(tenant, who.subject, fields["client_key"])
    if quota is not None:
        guard.refuse(
            Refused(429, "quota_exceeded", f"quota reached ({quota})"),
            event="limit_refused",
            route="POST /sessions",
            source=source,
            tenant=tenant,
            subject=who.subject,
            limit=quota,
        )
    try:
        result = await mm.allocate(AllocationRequest(tenant=tenant, subject=who.subject, **fields))
    except StoreError as exc:
        mm.metrics.allocation(tenant, body.app, allocation_refusal(exc))
        raise
    if isinstance(result, Allocation):
        mm.metrics.allocation(tenant, body.app, "assigned")
        limits.admitted(tenant, who.subject, queued=False)
        s = result.session
        audit(
            "session_start",
            outcome="ok",
            tenant=tenant,
            subject=who.subject,
            source=source,
            session_id=s.session_id,
            slot_id=s.slot_id,
            host_id=s.host_id,
        )
        return _json(assigned(result), 201)
    mm.metrics.allocation(tenant, body.app, "queued")
    limits.admitted(tenant, who.subject, queued=True)
    return _json(ticket_reply(result), 202)


async def _own_ticket(request: web.Request, mm: Matchmaker) -> tuple[str, Caller, str | None]:
    """The ticket id of the path, if it is the caller's (else 404 as for an unknown id)."""
    who, source = await guard.caller(request, mm.settings)
    ticket_id = request.match_info["ticket_id"]
    guard.owned_ticket(request, await mm.store.ticket(ticket_id), who, source)
    return ticket_id, who, source


async def ticket_status(request: web.Request) -> web.Response:
    mm = request.app[MATCHMAKER]
    ticket_id, _, _ = await _own_ticket(request, mm)
    return _json(ticket_reply(await mm.ticket_status(ticket_id, heard=True)))


async def cancel_ticket(request: web.Request) -> web.Response:
    mm = request.app[MATCHMAKER]
    ticket_id, _, _ = await _own_ticket(request, mm)
    if not await mm.cancel(ticket_id):
        raise _error(404, "not_waiting", "no waiting ticket with that id")
    return _json(TicketCancelled(ticket_id=ticket_id, reason="cancelled by the client"))


async def ticket_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the ticket's position and ETA, live, until it is served.

    A client that goes away while still waiting loses its place: at once without a client
    key, after the rejoin grace with one (a reload posts again with the key and gets the
    same ticket back). Opening the stream again also takes the place back.
    """
    mm = request.app[MATCHMAKER]
    ticket_id, who, source = await _own_ticket(request, mm)
    await mm.ticket_status(ticket_id, heard=True)  # 404 before the stream starts
    limits = request.app[guard.LIMITS]
    quota = limits.open_stream(who.tenant, who.subject)
    if quota is not None:
        guard.refuse(
            Refused(429, "quota_exceeded", f"quota reached ({quota})"),
            event="limit_refused",
            route="GET /queue/{ticket_id}/events",
            source=source,
            tenant=who.tenant,
            subject=who.subject,
            limit=quota,
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    finished = False
    try:
        # Inside the try: a client that hangs up before the headers are out still loses
        # its place (aiohttp's own finish of this response then fails quietly).
        await response.prepare(request)
        async for status in mm.watch(ticket_id):
            if status is None:
                await response.write(b": keepalive\n\n")  # fails once the client has gone
                continue
            reply = ticket_reply(status)
            name = type(reply).__struct_config__.tag
            assert isinstance(name, str)
            await response.write(b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(reply) + b"\n\n")
            finished = not isinstance(reply, Waiting)
    except (ConnectionError, StoreError):
        pass
    finally:
        limits.close_stream(who.tenant, who.subject)
        if not finished:
            with contextlib.suppress(StoreError):
                await mm.stream_closed(ticket_id)
    return response


# --- signalling -------------------------------------------------------------------------


async def session_event(request: web.Request) -> web.Response:
    mm = request.app[MATCHMAKER]
    session_id = request.match_info["session_id"]
    route = f"POST /sessions/{session_id}/events"
    source = guard.source_of(request, mm.settings)
    tenant = session_events_.authorize(mm, session_id, _bearer(request), source, route)
    body: SessionEvent = await _body(request, SessionEvent)
    guard.report_allowed(request, mm.settings, body.event, tenant, session_id)
    await mm.session_event(tenant, session_id, body.event)  # SessionEnded: 410
    return _json(EventAccepted(ok=True))


async def session_events(request: web.Request) -> web.Response:
    """Many sessions' reports in one request: each item as ``session_event`` would take it,
    its outcome in the reply (``matchmaker.session_events``). The request itself fails only
    for its body (400, 413) or, with a connect or disconnect in it, the report token (403)."""
    mm = request.app[MATCHMAKER]
    source = guard.source_of(request, mm.settings)
    body: SessionEventBatch = await _body(request, SessionEventBatch)
    needing = session_events_.report_token_needed(body.events)
    if needing is not None:
        guard.report_allowed(request, mm.settings, needing.event, None, needing.session_id)
    results = await session_events_.apply_all(mm, body.events, source, store_error_reply)
    return _json(SessionEventResults(results=results))


# --- agents -----------------------------------------------------------------------------


async def register_host(request: web.Request) -> web.Response:
    mm = request.app[MATCHMAKER]
    grant = guard.agent(request, mm.settings, None)  # 401 before the body is read
    reg: HostRegistration = await _body(request, HostRegistration)
    if not reg.slots or len({s.index for s in reg.slots}) != len(reg.slots):
        raise _error(400, "invalid_body", "a host needs at least one slot, with distinct indexes")
    guard.registration(request, mm.settings, grant, reg)
    host = await mm.register_host(reg)
    creds = request.app[guard.CREDENTIALS]
    creds.remember(reg.host_id, [(spec.index, spec.tenant, spec.streamer_id) for spec in reg.slots])
    if creds.enabled:
        host = msgspec.structs.replace(host, streamer_tokens=creds.for_host(reg.host_id))
    return _json(host, 201)


async def heartbeat(request: web.Request) -> web.Response:
    mm = request.app[MATCHMAKER]
    host_id = request.match_info["host_id"]
    guard.agent(request, mm.settings, host_id)
    hb: Heartbeat = await _body(request, Heartbeat)
    reply = await mm.heartbeat(host_id, hb)
    creds = request.app[guard.CREDENTIALS]
    if creds.enabled and creds.wanted(hb.full, hb.credentials_expire_at):
        if not creds.known(host_id):  # registered through another replica (or before a restart)
            # One read of every slot fills in every host, so a replica that starts amid a
            # fleet reads the slots once, not once per host.
            by_host: dict[str, list[tuple[int, str, str]]] = {}
            for sl in await mm.store.slots():
                by_host.setdefault(sl.host_id, []).append(
                    (int(sl.slot_id.rsplit("/", 1)[1]), sl.tenant, sl.streamer_id)
                )
            for known_host, slots in by_host.items():
                creds.remember(known_host, slots)
        reply = msgspec.structs.replace(reply, streamer_tokens=creds.for_host(host_id))
    return _json(reply)


# --- operators --------------------------------------------------------------------------


def _admin(request: web.Request) -> Matchmaker:
    mm = request.app[MATCHMAKER]
    try:
        _require_secret(request, mm.settings.admin_token, "admin")
    except Refused as exc:
        guard.admin_refused(request, mm.settings, exc)
    if request.method != "GET":
        audit(
            "admin_action",
            outcome="ok",
            subject="admin",
            source=guard.source_of(request, mm.settings),
            action=getattr(request.match_info.route.handler, "__name__", request.path),
            **dict(request.match_info),
        )
    return mm


async def admin_hosts(request: web.Request) -> web.Response:
    return _json(await _admin(request).hosts())  # dead from the heartbeat deadline on, as allocation


async def admin_slots(request: web.Request) -> web.Response:
    return _json(await _admin(request).store.slots())


async def admin_sessions(request: web.Request) -> web.Response:
    return _json(await _admin(request).store.sessions())


async def admin_queue(request: web.Request) -> web.Response:
    mm = _admin(request)
    out = []
    for tenant, app, length in await mm.store.queues():
        tickets = await mm.store.waiting(tenant, app, length)
        listed = [
            QueuedTicket(ticket_id=t.ticket_id, enqueued_at=t.enqueued_at, region=t.request.region) for t in tickets
        ]
        out.append(QueueListing(tenant=tenant, app=app, length=length, tickets=listed))
    return _json(out)


async def admin_drain(request: web.Request) -> web.Response:
    mm = _admin(request)
    body: DrainRequest = await _body(request, DrainRequest)
    return _json(await mm.drain(request.match_info["host_id"], body.draining))


async def admin_end_session(request: web.Request) -> web.Response:
    mm = _admin(request)
    ended = await mm.end(request.match_info["session_id"], EndReason.FORCE_ENDED)
    if ended is None:
        raise _error(404, "unknown_session", "no live session with that id")
    return _json(ended)


_DOCUMENT = web.AppKey("openapi_document", bytes)


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_DOCUMENT], content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HANDLERS: dict[str, Handler] = {
    h.__name__: h
    for h in (
        create_session,
        session_event,
        session_events,
        ticket_status,
        cancel_ticket,
        ticket_events,
        register_host,
        heartbeat,
        admin_hosts,
        admin_slots,
        admin_sessions,
        admin_queue,
        admin_drain,
        admin_end_session,
        openapi_document,
    )
}


def create_app(matchmaker: Matchmaker) -> web.Application:
    """The API as an app to mount at ``/api/v1`` (standalone, or on the player port):
    exactly the routes of ``matchmaker.openapi.ROUTES``."""
    app = web.Application(client_max_size=_MAX_BODY, middlewares=[trace_joins, _store_errors])
    app[MATCHMAKER] = matchmaker
    s = matchmaker.settings
    app[guard.AUTH] = CallerAuth.from_settings(s)
    app[guard.LIMITS] = Limits(s, matchmaker.store, hits=matchmaker.metrics.limit_hits)
    app[guard.CREDENTIALS] = StreamerCredentials(matchmaker.keys, s.streamer_token_ttl_s)
    app[_DOCUMENT] = msgspec.json.encode(build_document())
    if {route.operation for route in ROUTES} != set(HANDLERS):
        raise RuntimeError("matchmaker.openapi.ROUTES and matchmaker.http.HANDLERS name different operations")
    for route in ROUTES:
        app.router.add_route(route.method, route.path, HANDLERS[route.operation])
    return app
