"""Who may open a socket or read a listing: streamer credentials, per-IP and per-node
connection limits, allowed Origins, client addresses behind trusted proxies, RFC 6455
masking and the security headers of the player port.

Everything here runs at the WebSocket upgrade or on a REST request, never per relayed
message (the mask check reads only frame headers). A refusal answers before any
WebSocket message (HTTP 401/403/429/503), writes one audit line (``pixelfleet.audit``)
and bumps ``AccessGuard.counts``, which ``/metrics`` exports at scrape time
(``pixelfleet_signaling_access_refusals_total``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
from aiohttp import web

from pixelfleet.audit import audit
from pixelfleet.tokens import InvalidToken, TokenKeys, verify, verify_streamer
from signaling.config import Settings
from signaling.limits import TokenBucket
from signaling.protocol import Credential, Role

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ViewScope(NamedTuple):
    """What a listing caller with a session token or streamer credential may see: the
    one streamer id it names, and only while that id's holder is of its tenant (or of
    none known: open mode, or listed by an older node)."""

    streamer_id: str
    tenant: str


# Every ``reason`` a refusal carries (the audit line's and the metric label's): a fixed set.
REFUSAL_REASONS = (
    "origin_not_allowed",
    "node_connection_cap",
    "connect_rate",
    "ip_connection_cap",
    "streamer_credential_missing",
    "streamer_credential_invalid",
    "session_token_refused",
    "listing_unauthenticated",
    "unmasked_frame",
)


def _json_error(cls: type[web.HTTPException], error: str, message: str, **headers: str) -> web.HTTPException:
    return cls(
        text=msgspec.json.encode({"error": error, "message": message}).decode(),
        content_type="application/json",
        headers=headers or None,
    )


def token_of(request: web.Request) -> str | None:
    """``?token=`` (what UE's -PixelStreamingURL and browsers can carry) or ``Authorization: Bearer``."""
    token = request.query.get("token")
    if token:
        return token
    header = request.headers.get("Authorization", "")
    return header[7:].strip() or None if header[:7].lower() == "bearer " else None


def _networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


@dataclass
class AccessGuard:
    """The node's door: one per signalling process."""

    settings: Settings
    keys: TokenKeys | None = None  # streamer credentials (and listings) checked once set
    required: bool = True  # a streamer/SFU without a credential is refused (when keys are set)
    counts: dict[str, int] = field(default_factory=dict)  # refusals by reason
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)
    _open: dict[str, int] = field(default_factory=dict)  # client address -> open sockets
    _open_total: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        self._trusted = _networks(s.trusted_proxies)
        self._exempt = _networks(s.connect_limits_exempt)
        self._origins = frozenset(o.rstrip("/").lower() for o in s.allowed_origins)

    # --- who is asking -----------------------------------------------------------------

    def client_address(self, request: web.Request) -> str | None:
        """The peer's address, or the last untrusted hop of X-Forwarded-For when the peer
        is a configured trusted proxy (a client cannot forge it by sending the header)."""
        remote = request.remote
        if not self._trusted or remote is None or not _within(remote, self._trusted):
            return remote
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not _within(hop, self._trusted):
                return hop
        return remote

    def refuse(
        self, reason: str, request: web.Request, exc: web.HTTPException, *, port: str, **fields: Any
    ) -> web.HTTPException:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        audit(
            "auth_refused",
            outcome="refused",
            source=self.client_address(request),
            service="signaling",
            port=port,
            reason=reason,
            path=request.path[:200],
            status=exc.status,
            **fields,
        )
        return exc

    # --- the WebSocket upgrade ---------------------------------------------------------

    def check_origin(self, request: web.Request, role: Role) -> None:
        origin = request.headers.get("Origin")
        if role is not Role.PLAYER or not self._origins or origin is None:
            return  # non-browser clients send no Origin: the session token is their check
        if origin.rstrip("/").lower() not in self._origins:
            raise self.refuse(
                "origin_not_allowed",
                request,
                _json_error(web.HTTPForbidden, "forbidden", "this Origin may not open signalling"),
                port=role.value,
                origin=origin[:200],
            )

    def admit_connection(self, request: web.Request, role: Role, now: float) -> str | None:
        """Count the socket against the per-IP rate and caps and the node cap; returns the
        client address to pass to ``release``. Raises 429/503 when over a limit."""
        s = self.settings
        address = self.client_address(request)
        if s.max_connections and self._open_total >= s.max_connections:
            raise self.refuse(
                "node_connection_cap",
                request,
                _json_error(web.HTTPServiceUnavailable, "busy", "this node is full", **{"Retry-After": "5"}),
                port=role.value,
            )
        key = address or "?"
        if address is None or not _within(address, self._exempt):
            if s.connect_rate_per_ip > 0:
                bucket = self._buckets.get(key)
                if bucket is None:
                    if len(self._buckets) > 100_000:
                        self._buckets.clear()  # bounded: a flood of addresses forgets old buckets
                    bucket = self._buckets[key] = TokenBucket(s.connect_rate_per_ip, s.connect_burst_per_ip, now)
                if not bucket.take(now):
                    raise self.refuse(
                        "connect_rate",
                        request,
                        _json_error(
                            web.HTTPTooManyRequests, "rate_limited", "too many connects", **{"Retry-After": "1"}
                        ),
                        port=role.value,
                    )
            if s.max_connections_per_ip and self._open.get(key, 0) >= s.max_connections_per_ip:
                raise self.refuse(
                    "ip_connection_cap",
                    request,
                    _json_error(web.HTTPTooManyRequests, "rate_limited", "too many open sockets from this address"),
                    port=role.value,
                )
        self._open[key] = self._open.get(key, 0) + 1
        self._open_total += 1
        return key

    def release(self, key: str | None) -> None:
        if key is None:
            return
        self._open_total -= 1
        left = self._open.get(key, 1) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)

    def streamer_credential(self, request: web.Request, role: Role) -> Credential | None:
        """The credential a streamer or SFU presents; None in open mode. 401 when it is
        missing (where required), forged, expired, or a player's session token."""
        if self.keys is None:
            return None
        token = token_of(request)
        if token is None:
            if not self.required:
                return None
            raise self.refuse(
                "streamer_credential_missing",
                request,
                _json_error(web.HTTPUnauthorized, "unauthorized", "a streamer credential is required (?token=)"),
                port=role.value,
            )
        try:
            claims = verify_streamer(self.keys, token)
        except InvalidToken as exc:
            raise self.refuse(
                "streamer_credential_invalid",
                request,
                _json_error(web.HTTPUnauthorized, "unauthorized", str(exc)),
                port=role.value,
                detail=str(exc)[:200],
            ) from None
        return Credential(claims.streamer_id, claims.tenant, claims.token_id, claims.expires_at)

    # --- REST listings ------------------------------------------------------------------

    def viewer(self, request: web.Request) -> ViewScope | None:
        """The one streamer id (and tenant) a listing caller may see; None = everything
        (open mode or the admin token). 401 without a valid admin token, session token or
        streamer credential once streamer credentials are configured."""
        if self.keys is None:
            return None
        token = token_of(request)
        admin = self.settings.admin_token
        if token is not None and admin and _same(token, admin):
            return None
        if token is not None:
            for check in (_session_scope, _streamer_scope):
                scope = check(self.keys, token)
                if scope is not None:
                    return scope
        raise self.refuse(
            "listing_unauthenticated",
            request,
            _json_error(
                web.HTTPUnauthorized,
                "unauthorized",
                "listings need the admin token, a session token or a streamer credential",
            ),
            port="player",
        )


def _session_scope(keys: TokenKeys, token: str) -> ViewScope | None:
    try:
        claims = verify(keys, token)
    except InvalidToken:
        return None
    return ViewScope(claims.streamer_id, claims.tenant)


def _streamer_scope(keys: TokenKeys, token: str) -> ViewScope | None:
    try:
        claims = verify_streamer(keys, token)
    except InvalidToken:
        return None
    return ViewScope(claims.streamer_id, claims.tenant)


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)


def guard_from_settings(settings: Settings, keys: TokenKeys | None) -> AccessGuard:
    required = True if settings.require_streamer_token is None else settings.require_streamer_token
    return AccessGuard(settings, keys=keys, required=required)


# --- RFC 6455: client frames must be masked ----------------------------------------------


class MaskCheck:
    """Sits in front of aiohttp's frame parser (which accepts unmasked client frames) and
    reads only frame headers; on an unmasked frame it calls ``on_unmasked`` and drops the
    rest of the stream."""

    __slots__ = ("_parser", "_skip", "_head", "_bad", "_on_unmasked")

    def __init__(self, parser: object, on_unmasked: Callable[[], None]) -> None:
        self._parser = parser
        self._skip = 0  # payload bytes of the current frame still to pass
        self._head = b""  # a frame header split across reads
        self._bad = False
        self._on_unmasked = on_unmasked

    def feed_eof(self) -> object:
        return self._parser.feed_eof()  # type: ignore[attr-defined]

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._bad:
            return False, b""
        # Fast path, the usual read: whole frames under 64 KiB, nothing pending (one socket
        # carries many players' frames, so a read often holds several).
        if not self._skip and not self._head:
            i, n = 0, len(data)
            while n - i >= 6:
                b1 = data[i + 1]
                if not b1 & 0x80:
                    break  # unmasked: the slow path below says so
                size = b1 & 0x7F
                if size < 126:
                    i += 6 + size
                elif size == 126 and n - i >= 8:
                    i += 8 + ((data[i + 2] << 8) | data[i + 3])
                else:
                    break
            if i == n:
                return self._parser.feed_data(data)  # type: ignore[attr-defined, no-any-return]
        if not self._frames_masked(data):
            self._bad = True
            self._on_unmasked()
            return False, b""
        return self._parser.feed_data(data)  # type: ignore[attr-defined, no-any-return]

    def _frames_masked(self, data: bytes) -> bool:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                continue
            held = len(self._head)
            head = self._head + data[i : i + 14]
            if len(head) < 2:
                self._head = head
                return True
            if not head[1] & 0x80:
                return False
            size = head[1] & 0x7F
            need = 2 + (2 if size == 126 else 8 if size == 127 else 0) + 4
            if len(head) < need:
                self._head = head
                return True
            if size == 126:
                size = int.from_bytes(head[2:4], "big")
            elif size == 127:
                size = int.from_bytes(head[2:10], "big")
            i += need - held
            self._head = b""
            self._skip = size
        return True


def close_frame(code: int, reason: str) -> bytes:
    body = code.to_bytes(2, "big") + reason.encode()[:123]
    return bytes((0x88, len(body))) + body


# --- headers of the player port -------------------------------------------------------------


def security_headers(settings: Settings) -> Callable[[web.Request, web.StreamResponse], object]:
    """An ``on_response_prepare`` hook: no ``Server`` banner on any answer; CSP and framing
    rules on every answer of the player port (pages, REST, errors)."""
    ancestors = " ".join(settings.frame_ancestors) or "'self'"
    csp = f"{settings.page_csp}; frame-ancestors {ancestors}"
    # X-Frame-Options (older browsers) cannot name other sites: only set for 'none' and 'self'.
    frame_options = {"'none'": "DENY", "'self'": "SAMEORIGIN"}.get(ancestors)

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.pop("Server", None)
        response.headers["Server"] = "pixelfleet"  # aiohttp adds its name and version otherwise
        if response.status == 101:
            return
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if frame_options is not None:
            response.headers.setdefault("X-Frame-Options", frame_options)

    return hook


@web.middleware
async def malformed_paths(request: web.Request, handler: Callable[[web.Request], object]) -> web.StreamResponse:
    """A NUL or other control character in the path is a 400, before any handler (a
    file lookup with one raised and answered 500)."""
    if any(ord(c) < 32 for c in request.path):
        raise _json_error(web.HTTPBadRequest, "bad_request", "malformed path")
    return await handler(request)  # type: ignore[misc, no-any-return]
