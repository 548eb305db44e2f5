"""Who is asking: callers, agents, signalling, operators; and the audit line for a refusal.

- Callers (``/sessions``, ``/queue/*``): an OIDC or HS256 JWT (``pixelfleet.oidc``) gives
  a tenant and a subject; anonymous callers (``allow_anonymous``) are the subject
  ``anonymous:<client address>``. Tickets, sessions and client keys belong to the subject.
- Agents (``/hosts``): a per-host token (``mint_agent_token``: HS256 with
  ``agent_key_secret``, audience ``pixelfleet-agent``, claims ``hid`` and ``tenants``),
  so a leaked host token speaks for that host and its tenants only. Without
  ``agent_key_secret`` the fleet-wide ``agent_token`` is accepted (legacy, warned).
- Signalling: the session token names the session; connect/disconnect reports also need
  the ``report_token`` (header ``X-Pixelfleet-Report-Token``) once it is configured.
- Operators: the admin token.

A signed per-host token (rather than an HMAC derived per host from a fleet secret) was
chosen because it carries its own scope (the tenants) and expiry, so the matchmaker needs
no table of hosts to check a registration, and an operator can mint one for a new host
without touching the matchmaker's configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import jwt
from aiohttp import web

from matchmaker.config import MatchmakerSettings
from pixelfleet.audit import audit
from pixelfleet.oidc import Caller, CallerPolicy, InvalidCaller, JwksCache, verify_caller

__all__ = [
    "AGENT_AUDIENCE",
    "REPORT_HEADER",
    "AgentGrant",
    "Refused",
    "caller_policy",
    "client_address",
    "mint_agent_token",
    "owned_client_key",
    "verify_agent_token",
]

AGENT_AUDIENCE = "pixelfleet-agent"
ISSUER = "pixelfleet"
REPORT_HEADER = "X-Pixelfleet-Report-Token"
FLEET_SUBJECT = "agent:fleet"


class Refused(Exception):
    """An authentication or authorization refusal: HTTP status, API error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class AgentGrant:
    """What an agent's credential allows: one host and its tenants, or (legacy) anything."""

    host_id: str | None  # None: the fleet-wide token, any host
    tenants: frozenset[str] | None  # None: any tenant

    @property
    def subject(self) -> str:
        return FLEET_SUBJECT if self.host_id is None else f"host:{self.host_id}"


def mint_agent_token(secret: str, *, host_id: str, tenants: list[str], ttl_s: int, now: float | None = None) -> str:
    """A host's credential for registering and heartbeating (``pixelfleet agent-token``)."""
    if not host_id or not tenants or not all(tenants):
        raise ValueError("an agent token names a host id and at least one tenant")
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "aud": AGENT_AUDIENCE,
        "sub": f"host:{host_id}",
        "hid": host_id,
        "tenants": sorted(set(tenants)),
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": secrets.token_urlsafe(12),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_agent_token(secret: str, token: str, *, leeway_s: float = 30.0) -> AgentGrant:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=AGENT_AUDIENCE,
            issuer=ISSUER,
            leeway=leeway_s,
            options={"require": ["exp", "iat", "hid", "tenants", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise Refused(401, "token_expired", "the agent token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise Refused(401, "invalid_token", f"invalid agent token: {exc}") from None
    hid, tenants = claims["hid"], claims["tenants"]
    if not isinstance(hid, str) or not hid or not isinstance(tenants, list) or not tenants:
        raise Refused(401, "invalid_token", "the agent token names no host or no tenants")
    if not all(isinstance(t, str) and t for t in tenants):
        raise Refused(401, "invalid_token", "the agent token's tenants must be non-empty strings")
    return AgentGrant(hid, frozenset(tenants))


def agent_grant(settings: MatchmakerSettings, token: str | None) -> AgentGrant:
    """The presented agent credential's grant, or ``Refused``."""
    if settings.agent_key_secret is None and settings.agent_token is None:
        raise Refused(403, "disabled", "no agent token is configured on this matchmaker")
    if token is None:
        raise Refused(401, "unauthorized", "a valid agent token is required")
    if settings.agent_key_secret is not None:
        return verify_agent_token(settings.agent_key_secret, token)
    assert settings.agent_token is not None
    if not hmac.compare_digest(token.encode(), settings.agent_token.encode()):
        raise Refused(401, "unauthorized", "a valid agent token is required")
    return AgentGrant(None, None)


def signaling_url_allowed(settings: MatchmakerSettings, url: str) -> bool:
    """Exact match, or a prefix match for an entry ending in ``*``; no list: any URL."""
    if not settings.signaling_urls:
        return True
    for allowed in settings.signaling_urls:
        if allowed.endswith("*") and url.startswith(allowed[:-1]):
            return True
        if url == allowed:
            return True
    return False


def caller_policy(settings: MatchmakerSettings) -> CallerPolicy | None:
    """The caller-token policy the settings ask for; None when no caller key is configured."""
    jwks = None
    if settings.caller_jwks_url:
        jwks = JwksCache(
            settings.caller_jwks_url,
            ttl_s=settings.caller_jwks_ttl_s,
            min_refetch_s=settings.caller_jwks_min_refetch_s,
        )
    if jwks is None and not settings.caller_jwt_secret:
        return None
    return CallerPolicy(
        hs256_secret=settings.caller_jwt_secret,
        jwks=jwks,
        algorithms=tuple(settings.caller_algorithms),
        issuer=settings.caller_issuer,
        audience=settings.caller_audience,
        leeway_s=settings.caller_leeway_s,
        tenant_claim=settings.caller_tenant_claim,
        subject_claim=settings.caller_subject_claim,
    )


_VERIFIED_MAX = 4096


@dataclass
class CallerAuth:
    """Caller identification for one API app, with a cache of verified tokens (a caller
    presents one token on every request; a signature check costs a tenth of an allocation)."""

    settings: MatchmakerSettings
    policy: CallerPolicy | None
    _verified: dict[str, Caller]

    @classmethod
    def from_settings(cls, settings: MatchmakerSettings) -> CallerAuth:
        return cls(settings, caller_policy(settings), {})

    async def caller(self, token: str | None, source: str | None) -> Caller:
        s = self.settings
        if token is None:
            if s.allow_anonymous:
                return Caller(s.anonymous_tenant, f"anonymous:{source or 'unknown'}", float("inf"))
            raise Refused(401, "unauthorized", "a caller token is required")
        if self.policy is None:
            raise Refused(401, "unauthorized", "caller tokens are not configured on this matchmaker")
        known = self._verified.get(token)
        if known is not None:
            if time.time() < known.expires_at:
                return known
            del self._verified[token]
        try:
            caller = await verify_caller(self.policy, token)
        except InvalidCaller as exc:
            raise Refused(401, exc.code, str(exc)) from None
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = caller
        return caller


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def caller_token(request: web.Request) -> str | None:
    """The Bearer token, or ``access_token`` in the query on GET (a browser's EventSource
    cannot set headers; the matchmaker writes no access log, so the URL is not kept)."""
    token = bearer(request)
    if token is None and request.method == "GET":
        token = request.query.get("access_token") or None
    return token


def client_address(request: web.Request, trusted: list[str]) -> str | None:
    """The peer's address; behind trusted proxies, the nearest untrusted X-Forwarded-For entry."""
    peer = request.remote
    if not trusted or peer is None:
        return peer
    networks = _networks(tuple(trusted))
    if not _in(peer, networks):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, networks):
            return hop
    return hops[0] if hops else peer


_NETWORKS: dict[tuple[str, ...], list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}


def _networks(trusted: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    known = _NETWORKS.get(trusted)
    if known is None:
        known = _NETWORKS[trusted] = [ipaddress.ip_network(t, strict=False) for t in trusted]
    return known


def _in(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def owned_client_key(subject: str, client_key: str | None) -> str | None:
    """The client key as stored: prefixed with a digest of its subject, so the same key
    presented by another subject names another (empty) slot in the store."""
    if not client_key:
        return client_key
    digest = hashlib.sha256(subject.encode()).hexdigest()[:16]
    return f"{digest}:{client_key}"


def refuse(
    exc: Refused,
    *,
    event: str = "auth_refused",
    route: str,
    source: str | None,
    tenant: str | None = None,
    subject: str | None = None,
    reason: str | None = None,
    **fields: Any,
) -> NoReturn:
    """Write the audit line for a refusal, then raise it (the API turns it into an ErrorBody).
    ``reason`` defaults to the API error code."""
    audit(
        event,
        outcome="refused",
        tenant=tenant,
        subject=subject,
        source=source,
        route=route,
        reason=reason or exc.code,
        detail=str(exc),
        **fields,
    )
    raise exc


def open_doors(settings: MatchmakerSettings) -> list[str]:
    """What these settings leave open, for a warning at start (README "Security")."""
    out = []
    if settings.agent_key_secret is None and settings.agent_token is not None:
        out.append("fleet-wide agent token: any holder registers any host for any tenant (set agent_key_secret)")
    if not settings.signaling_urls:
        out.append("no signaling_urls: a host may send players to any URL")
    if settings.report_token is None:
        out.append("no report_token: players can report their own connects and disconnects")
    if settings.allow_anonymous:
        out.append("anonymous callers allowed: the subject is the client address")
    return out
