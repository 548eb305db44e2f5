"""HTTP surface of the player port: the WebSocket upgrade on any path, the player
page, and Wilbur's read-only REST API (``/api/status``, ``/api/streamers``,
``/api/players``) so existing dashboards keep working."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web, web_urldispatcher

from pixelfleet import __version__
from pixelfleet.prometheus import exposition_handler
from signaling.access import ViewScope
from signaling.broker import NodeCounts
from signaling.peer_links import node_of
from signaling.protocol import Listing, Peer, Role
from signaling.ws import SignalingNode


def add_routes(app: web.Application, node: SignalingNode, static_dir: Path) -> None:
    started = time.monotonic()
    core = node.core
    root = static_dir.resolve()

    def player_info(peer: Peer) -> dict[str, Any]:
        info: dict[str, Any] = {"playerId": peer.player_id, "type": "SFU" if peer.role is Role.SFU else "Player"}
        if peer.subscribed_to is not None:
            info["subscribedTo"] = peer.subscribed_name
        return info

    def streamer_info(peer: Peer) -> dict[str, Any]:
        # Subscribers may be on other nodes: listed by id and kind, with the streamer's id.
        info: dict[str, Any] = {
            "streamerId": peer.streamer_id,
            "type": "SFU" if peer.role is Role.SFU else "Streamer",
            "streaming": peer.streaming,
            "subscribers": [
                {"playerId": pid, "type": "SFU" if sub.sfu else "Player", "subscribedTo": peer.streamer_id}
                for pid, sub in peer.subscribers.items()
            ],
        }
        if peer.credential is not None:  # only the credential's holder makes this appear (the agent checks it)
            info["credentialId"] = peer.credential.credential_id
            info["tenant"] = peer.credential.tenant
        return info

    def visible(request: web.Request) -> Callable[[str | None], bool]:
        """Listings show a caller what its token allows (``AccessGuard.viewer``: 401 without
        one): its one id, unless a holder of another tenant has it, on any node."""
        return shown_to(node.access.viewer(request))

    def shown_to(scope: ViewScope | None) -> Callable[[str | None], bool]:
        if scope is None:
            return lambda sid: True

        def shown(sid: str | None) -> bool:
            if sid != scope.streamer_id:
                return False
            listing = core.listing(sid)
            return listing is None or listing.tenant in (None, scope.tenant)

        return shown

    async def status(request: web.Request) -> web.Response:
        scope = node.access.viewer(request)
        shown = shown_to(scope)
        peers = list(core.peers())
        return web.json_response(
            {
                "uptime": int((time.monotonic() - started) * 1000),
                "streamer_count": sum(p.streamer_id is not None and shown(p.streamer_id) for p in peers),
                "player_count": sum(p.player_id is not None and shown(_watched(p)) for p in peers),
                "version": __version__,  # the same as pixelfleet --version
                "node": core.node,
                "cluster": _cluster_counts(node.broker.node_counts(), None if scope is None else shown),
            }
        )

    def listing_info(sid: str, listing: Listing, counts: dict[str, NodeCounts]) -> dict[str, Any]:
        """A streamer on another node of the cluster: what the directory knows of it, and
        its subscriber count as its node last reported (none from a node that reports none)."""
        where = node_of(listing.address)
        info: dict[str, Any] = {"streamerId": sid, "streaming": listing.streaming, "node": where}
        if where in counts:
            info["players"] = counts[where].subscribers.get(sid, 0)
        if listing.credential_id is not None:  # none: open mode, or listed by an older node (unknown)
            info["credentialId"] = listing.credential_id
            info["tenant"] = listing.tenant
        return info

    async def streamers(request: web.Request) -> web.Response:
        # Cluster-wide: this node's streamers in full, the others' from the directory.
        shown = visible(request)
        counts = node.broker.node_counts()
        out = []
        for sid, listing in core.listings():
            if not shown(sid):
                continue
            peer = core.streamer_by_id(sid)
            out.append(streamer_info(peer) if peer is not None else listing_info(sid, listing, counts))
        return web.json_response(out)

    async def streamer(request: web.Request) -> web.Response:
        sid = request.match_info["streamer_id"]
        if not visible(request)(sid):  # the same answer as for an id that does not exist
            return web.json_response({"message": f"No streamer id matches {sid}."}, status=404)
        peer = core.streamer_by_id(sid)
        if peer is not None:
            return web.json_response(streamer_info(peer))
        listing = core.listing(sid)
        if listing is None:
            return web.json_response({"message": f"No streamer id matches {sid}."}, status=404)
        return web.json_response(listing_info(sid, listing, node.broker.node_counts()))

    async def players(request: web.Request) -> web.Response:
        shown = visible(request)
        return web.json_response(
            [player_info(p) for p in core.peers() if p.player_id is not None and shown(_watched(p))]
        )

    async def player(request: web.Request) -> web.Response:
        pid = request.match_info["player_id"]
        shown = visible(request)
        peer = core.player_by_id(pid)
        if peer is None or not shown(_watched(peer)):
            return web.json_response({"message": f"No player ID matches {pid}."}, status=404)
        return web.json_response(player_info(peer))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": node.accepting})

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        """503 while draining, or while a cluster node is out of touch with Redis."""
        reasons = [] if node.accepting else ["draining"]
        if not node.broker.ready:
            reasons.append("cluster state unreachable")
        return web.json_response({"ok": not reasons, "reasons": reasons}, status=503 if reasons else 200)

    async def page(request: web.Request) -> web.StreamResponse:
        name = request.match_info["tail"] or "player.html"
        path = (root / name).resolve()
        if not path.is_file() or root not in path.parents:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    app.router.add_get("/api/status", status)
    app.router.add_get("/api/streamers", streamers)
    app.router.add_get("/api/streamers/{streamer_id}", streamer)
    app.router.add_get("/api/players", players)
    app.router.add_get("/api/players/{player_id}", player)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", exposition_handler(node.metrics))  # docs/observability.md
    upgrades = _WebSocketUpgrade("/{tail:.*}", name="player-socket")  # Epic's clients use any path
    app.router.register_resource(upgrades)
    upgrades.add_route("GET", functools.partial(node.handle, role=Role.PLAYER))
    app.router.add_resource("/{tail:.*}", name="player-page").add_route("GET", page)


def _cluster_counts(counts: dict[str, NodeCounts], shown: Callable[[str | None], bool] | None) -> dict[str, int]:
    """Totals over the live nodes (``nodes``: how many were counted). A caller scoped to
    one streamer (``shown``) gets that streamer and its subscribers, wherever they are."""
    if shown is None:
        streamers = sum(c.streamers for c in counts.values())
        players = sum(c.players for c in counts.values())
    else:
        mine = [n for c in counts.values() for sid, n in c.subscribers.items() if shown(sid)]
        streamers, players = len(mine), sum(mine)
    return {"streamer_count": streamers, "player_count": players, "nodes": len(counts)}


def _watched(peer: Peer) -> str | None:
    """The streamer a player is scoped to or watches (what decides whether a caller sees it)."""
    return peer.allowed_streamer or peer.subscribed_name


class _WebSocketUpgrade(web_urldispatcher.DynamicResource):
    """A route that matches WebSocket upgrades only.

    So the player socket reaches ``node.handle`` directly: a page-or-socket handler
    in between would keep its frame alive for the socket's whole life (0.4 KB each,
    measured by the benchmark's idle-memory phase).
    """

    async def resolve(self, request: web.Request) -> Any:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None, set()
        return await super().resolve(request)
