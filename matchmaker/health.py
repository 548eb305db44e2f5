"""``/livez``, ``/readyz`` and ``/metrics`` of a standalone matchmaker replica.

Ready means it can serve allocations: the state store answers a read (Redis reachable;
always true in memory) and the replica is not shutting down. A load balancer takes a
replica that answers 503 out of rotation; the container health check uses ``/livez``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from pixelfleet.prometheus import exposition_handler

if TYPE_CHECKING:
    from matchmaker.server import MatchmakerServer


def add_health_routes(app: web.Application, server: MatchmakerServer) -> None:
    mm = server.matchmaker

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        reasons = ["draining"] if server.draining else []
        if not await mm.metrics.ping(mm.store):
            reasons.append("state store unreachable")
        return web.json_response({"ok": not reasons, "reasons": reasons}, status=503 if reasons else 200)

    async def refresh() -> None:
        await mm.metrics.refresh(mm.store, mm.clock, mm.settings.heartbeat_ttl_s)

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", exposition_handler(mm.metrics.registry, refresh))
