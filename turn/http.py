"""``GET /api/turn-credentials``: fresh ICE servers for clients that do not come through
signalling (a custom player, a test tool, a native app).

    {"iceServers": [{"urls": ["stun:..."]},
                    {"urls": ["turn:...?transport=udp", ...], "username": "1795809272:http-1f2e3d4c",
                     "credential": "..."}],
     "ttl": 3600, "expiresAt": 1795809272}

``iceServers`` goes straight into ``new RTCPeerConnection({iceServers})``. ``ttl`` and
``expiresAt`` are null when the credentials do not expire (static provider). The
response is never cached. Anyone who can reach the route gets credentials, exactly
as anyone who can open the player WebSocket gets them in ``config``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from aiohttp import web

from turn.config import TurnSettings
from turn.providers import IceServerProvider

__all__ = ["PATH", "credentials_route"]

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
) -> web.RouteDef:
    async def handler(request: web.Request) -> web.Response:
        grant = provider.ice_servers(user_for(request), settings.ttl_s)
        ttl = None if grant.expires_at is None else max(grant.expires_at - int(clock()), 0)
        return web.json_response(
            {"iceServers": grant.servers, "ttl": ttl, "expiresAt": grant.expires_at},
            headers={"Cache-Control": "no-store"},
        )

    return web.get(path, handler)
