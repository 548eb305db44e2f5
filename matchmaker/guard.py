"""The checks every API route makes before it touches the store, and their audit lines.

Each function either returns who is asking or raises ``Refused`` after writing the audit
line (``matchmaker.auth.refuse``); ``matchmaker.http`` answers a ``Refused`` with its
status and an ``ErrorBody``. Decisions (docs/matchmaker-api.md, "Authentication"):

- callers: 401 without a valid token; 429 ``rate_limited`` per address and per subject;
  a ticket of another subject (or tenant) is 404 ``not_found``, exactly as an unknown
  id, so ids cannot be probed;
- agents: 401 without a valid agent token; 403 ``forbidden`` for another host's id or a
  tenant the token does not name, or a host mixing a dedicated tenant with others;
  400 ``signaling_url_refused`` for a URL outside ``signaling_urls``;
- signalling: connect/disconnect reports without the report token are 403
  ``report_token_required`` once ``report_token`` is set.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from matchmaker.auth import (
    REPORT_HEADER,
    AgentGrant,
    CallerAuth,
    Refused,
    agent_grant,
    bearer,
    caller_token,
    client_address,
    refuse,
    signaling_url_allowed,
)
from matchmaker.config import MatchmakerSettings
from matchmaker.limits import Limits
from matchmaker.models import HostRegistration, Ticket
from matchmaker.streamer_creds import StreamerCredentials
from pixelfleet.audit import audit
from pixelfleet.oidc import Caller

__all__ = [
    "AUTH",
    "CREDENTIALS",
    "LIMITS",
    "agent",
    "caller",
    "owned_ticket",
    "refuse",
    "registration",
    "report_allowed",
    "source_of",
]

AUTH = web.AppKey("caller_auth", CallerAuth)
LIMITS = web.AppKey("limits", Limits)
CREDENTIALS = web.AppKey("streamer_credentials", StreamerCredentials)


def source_of(request: web.Request, settings: MatchmakerSettings) -> str | None:
    return client_address(request, settings.trusted_proxies)


def _route(request: web.Request) -> str:
    return f"{request.method} {request.path}"


async def caller(request: web.Request, settings: MatchmakerSettings) -> tuple[Caller, str | None]:
    """The authenticated caller and its address, after the rate limits."""
    source = source_of(request, settings)
    try:
        who = await request.app[AUTH].caller(caller_token(request), source)
    except Refused as exc:
        refuse(exc, route=_route(request), source=source)
    reason = request.app[LIMITS].rate(source, who.tenant, who.subject)
    if reason is not None:
        refuse(
            Refused(429, "rate_limited", f"too many requests ({reason})"),
            event="limit_refused",
            route=_route(request),
            source=source,
            tenant=who.tenant,
            subject=who.subject,
            limit=reason,
        )
    return who, source


def owned_ticket(request: web.Request, ticket: Ticket | None, who: Caller, source: str | None) -> Ticket:
    """The ticket if it is the caller's own; another's is refused as if it did not exist."""
    if ticket is not None and ticket.request.tenant == who.tenant and ticket.request.subject == who.subject:
        return ticket
    if ticket is not None:
        refuse(
            Refused(404, "unknown_session", "no ticket with that id"),
            reason="not_owner",
            event="access_refused",
            route=_route(request),
            source=source,
            tenant=who.tenant,
            subject=who.subject,
            ticket_id=ticket.ticket_id,
            owner_tenant=ticket.request.tenant,
        )
    raise Refused(404, "unknown_session", "no ticket with that id")


def agent(request: web.Request, settings: MatchmakerSettings, host_id: str | None) -> AgentGrant:
    """The agent's grant; with ``host_id``, checked to be that host's."""
    source = source_of(request, settings)
    try:
        grant = agent_grant(settings, bearer(request))
    except Refused as exc:
        refuse(exc, route=_route(request), source=source, host_id=host_id)
    if host_id is not None:
        _same_host(request, grant, host_id, source)
    return grant


def _same_host(request: web.Request, grant: AgentGrant, host_id: str, source: str | None) -> None:
    if grant.host_id is not None and grant.host_id != host_id:
        refuse(
            Refused(403, "forbidden", "this agent token is for another host"),
            event="access_refused",
            route=_route(request),
            source=source,
            subject=grant.subject,
            host_id=host_id,
        )


def registration(request: web.Request, settings: MatchmakerSettings, grant: AgentGrant, reg: HostRegistration) -> None:
    """A registration's host, tenants, pool and signaling_url, against the agent's grant."""
    source = source_of(request, settings)
    _same_host(request, grant, reg.host_id, source)
    _check_registration(reg, grant, settings, _route(request), source)


def _check_registration(
    reg: HostRegistration, grant: AgentGrant, settings: MatchmakerSettings, route: str, source: str | None
) -> None:
    tenants = {spec.tenant for spec in reg.slots}
    if grant.tenants is not None and not tenants <= grant.tenants:
        refuse(
            Refused(403, "forbidden", f"this agent token does not serve tenant(s) {sorted(tenants - grant.tenants)}"),
            event="access_refused",
            route=route,
            source=source,
            subject=grant.subject,
            host_id=reg.host_id,
            tenant=sorted(tenants - grant.tenants)[0],
        )
    dedicated = tenants & set(settings.dedicated_tenants)
    if dedicated and len(tenants) > 1:
        refuse(
            Refused(403, "forbidden", f"tenant(s) {sorted(dedicated)} have dedicated hosts: no other tenant's slots"),
            event="access_refused",
            route=route,
            source=source,
            subject=grant.subject,
            host_id=reg.host_id,
            tenant=sorted(dedicated)[0],
        )
    if not signaling_url_allowed(settings, reg.signaling_url):
        refuse(
            Refused(400, "signaling_url_refused", "this signaling_url is not in the matchmaker's signaling_urls"),
            route=route,
            source=source,
            subject=grant.subject,
            host_id=reg.host_id,
            signaling_url=reg.signaling_url[:200],
        )
    audit(
        "admin_action",
        outcome="ok",
        subject=grant.subject,
        source=source,
        action="register_host",
        host_id=reg.host_id,
        tenants=sorted(tenants),
    )


def report_allowed(
    request: web.Request, settings: MatchmakerSettings, event: str, tenant: str | None, session_id: str
) -> None:
    """Connect and disconnect reports come from signalling (its report token), not players.
    A batch is checked once, for its first such item (``tenant`` None: not yet verified)."""
    if settings.report_token is None or event in ("activity", "first_frame"):  # the page's own reports
        return
    presented = request.headers.get(REPORT_HEADER, "")
    if hmac.compare_digest(presented.encode(), settings.report_token.encode()):
        return
    refuse(
        Refused(403, "report_token_required", f"{event} reports are taken from signalling only (its report token)"),
        route=_route(request),
        source=source_of(request, settings),
        tenant=tenant,
        session_id=session_id,
        report=event,
    )


def admin_refused(request: web.Request, settings: MatchmakerSettings, exc: Refused) -> None:
    refuse(exc, route=_route(request), source=source_of(request, settings), subject="admin")
