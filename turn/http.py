"""``GET /api/turn-credentials``: fresh ICE servers for clients that do not come through
signalling (a custom player, a test tool, a native app).

    {"iceServers": [{"urls": ["stun:..."]},
                    {"urls": ["turn:...?transport=udp", ...], "username": "1795809272:http-1f2e3d4c",
                     "credential": "..."}],
     "ttl": 3600, "expiresAt": 1795809272}

``iceServers`` goes straight into ``new RTCPeerConnection({iceServers})``. ``ttl`` and
``expiresAt`` are null when the credentials do not expire (static provider). The
response is never cached. With session-token keys (``pixelfleet signaling`` with a key)
the route answers only a valid, unexpired session token (``Authorization: Bearer`` or
``?token=``; not used up, unlike at the WebSocket) with 401 otherwise, and the TURN user
part is the token's session id; without keys (open mode) anyone who can reach the route
gets credentials, as anyone who can open the player WebSocket gets them in ``config``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from aiohttp import web

from pixelfleet.audit import audit
from pixelfleet.tokens import InvalidToken, TokenKeys, verify
from signaling.protocol import Role
from turn.config import TurnSettings
from turn.metrics import TurnCounts
from turn.providers import IceServerProvider

__all__ = ["PATH", "credentials_route"]


def _session_user(request: web.Request, keys: TokenKeys) -> str:
    """The session id of a valid session token, or 401 (audited)."""
    header = request.headers.get("Authorization", "")
    token = request.query.get("token") or (header[7:].strip() if header[:7].lower() == "bearer " else "")
    try:
        claims = verify(keys, token)
    except InvalidToken as exc:
        audit(
            "auth_refused",
            outcome="refused",
            source=request.remote,
            service="signaling",
            port="player",
            reason="turn_credentials_unauthenticated",
            path=request.path,
            status=401,
            detail=str(exc)[:200],
        )
        raise web.HTTPUnauthorized(
            text='{"error":"unauthorized","message":"TURN credentials need a session token"}',
            content_type="application/json",
        ) from None
    return claims.session_id.replace(":", "_")


PATH = "/api/turn-credentials"

# request -> TURN user part; the matchmaker will derive it from the session token.
RequestUser = Callable[[web.Request], str]


def anonymous_user(request: web.Request) -> str:
    """An opaque per-request id: never the client's address (it ends up in coturn logs)."""
    return f"http-{secrets.token_hex(4)}"


def credentials_route(
    provider: IceServerProvider,
    settings: TurnSettings,
    *,
    path: str = PATH,
    user_for: RequestUser = anonymous_user,
    clock: Callable[[], float] = time.time,
    keys: TokenKeys | None = None,
    counts: TurnCounts | None = None,
) -> web.RouteDef:
    """``counts``: each answered request is counted there (``via="http"``); a 401 is not."""

    async def handler(request: web.Request) -> web.Response:
        user = user_for(request)
        if keys is not None:
            user = _session_user(request, keys)
        grant = provider.ice_servers(user, settings.ttl_s)
        if counts is not None:
            counts.issue("http", Role.PLAYER)
        ttl = None if grant.expires_at is None else max(grant.expires_at - int(clock()), 0)
        return web.json_response(
            {"iceServers": grant.servers, "ttl": ttl, "expiresAt": grant.expires_at},
            headers={"Cache-Control": "no-store"},
        )

    return web.get(path, handler)
