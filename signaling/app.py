"""The signalling server: three listeners (players + page, streamers, SFU) around one core.

Shutdown is graceful: stop accepting (``/readyz`` turns 503), wait ``drain_delay_s`` for
the load balancer to notice, close every peer with 1012 (service restart: unlike 1001,
Epic's frontend reconnects after it, so a rolling restart loses nobody), wait up to
``shutdown_grace_s`` for them to go, then release the ports and leave the cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import structlog
from aiohttp import web
from prometheus_client.registry import Collector

from pixelfleet.tokens import TokenKeys
from signaling import errors
from signaling.access import guard_from_settings, malformed_paths, security_headers
from signaling.broker import open_broker
from signaling.config import Settings
from signaling.http_api import add_routes
from signaling.protocol import PeerOptions, Role, SignalingCore
from signaling.sessions import SessionGate
from signaling.ws import SignalingNode

log = structlog.get_logger("signaling")

STATIC_DIR = Path(__file__).parent / "static"


class SignalingServer:
    """Owns the listeners. ``start()`` binds; ports given as 0 are read back afterwards."""

    def __init__(
        self,
        settings: Settings,
        *,
        peer_options: PeerOptions | None = None,
        player_routes: Sequence[web.AbstractRouteDef] = (),
        player_subapps: Sequence[tuple[str, web.Application]] = (),
        session_gate: SessionGate | None = None,
        streamer_keys: TokenKeys | None = None,
        collectors: Sequence[Collector] = (),
    ) -> None:
        """``streamer_keys``: verify streamer and SFU credentials (and lock the REST
        listings) with them; None is open mode (``pixelfleet up``, Epic's single box).
        ``collectors``: extra metric families on the node's ``/metrics`` (e.g. TURN)."""
        self.settings = settings
        self.player_routes = tuple(player_routes)  # extra routes on the player port (e.g. TURN)
        self.player_subapps = tuple(player_subapps)  # e.g. the matchmaker API under /api/v1
        # not_after: a streamer with a credential (its TURN credentials end with it; none here)
        options = peer_options or (lambda role, peer_id, *, not_after=None: dict(settings.peer_connection_options))
        broker = open_broker(settings.state_url, node_id=settings.node_id, node_ttl_s=settings.node_ttl_s)
        self.core = SignalingCore(
            node=broker.node_id,
            cluster=broker.distributed,
            peer_options=options,
            max_players_per_streamer=settings.max_players_per_streamer,
            max_protocol_errors=settings.max_protocol_errors,
            # Player ids are unique in the cluster: a node's players carry its id.
            player_id_prefix=f"Player{broker.node_id}-" if broker.distributed else "Player",
        )
        if session_gate is not None:
            session_gate.first_use = broker.first_use
        self.node = SignalingNode(settings, self.core, broker, session_gate)
        self.node.access = guard_from_settings(settings, streamer_keys)
        for collector in collectors:
            self.node.metrics.register(collector)
        self._runners: dict[Role, web.AppRunner] = {}
        self.ports: dict[Role, int] = {}

    @property
    def player_port(self) -> int:
        return self.ports[Role.PLAYER]

    @property
    def streamer_port(self) -> int:
        return self.ports[Role.STREAMER]

    @property
    def sfu_port(self) -> int | None:
        return self.ports.get(Role.SFU)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[malformed_paths])
        app.on_response_prepare.append(security_headers(self.settings))  # type: ignore[arg-type]
        return app

    def player_app(self) -> web.Application:
        app = self._app()
        app.add_routes(self.player_routes)  # before add_routes' catch-all page route
        for prefix, subapp in self.player_subapps:
            app.add_subapp(prefix, subapp)
        add_routes(app, self.node, Path(self.settings.static_dir) if self.settings.static_dir else STATIC_DIR)
        return app

    def _ws_only_app(self, role: Role) -> web.Application:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.node.handle(request, role)

        app = self._app()
        app.router.add_get("/{tail:.*}", handler)  # Epic accepts any path
        return app

    async def start(self) -> None:
        s = self.settings
        await self.node.broker.start(self.node)  # in a cluster: joined before the first socket
        apps = {
            Role.PLAYER: (self.player_app(), s.player_port),
            Role.STREAMER: (self._ws_only_app(Role.STREAMER), s.streamer_port),
        }
        if s.sfu_port >= 0:
            apps[Role.SFU] = (self._ws_only_app(Role.SFU), s.sfu_port)
        for role, (app, port) in apps.items():
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=s.shutdown_grace_s)
            await runner.setup()
            host = s.host if role is Role.PLAYER else s.streamer_host  # streamers stay private
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
            self._runners[role] = runner
            server = cast(asyncio.Server | None, site._server)  # noqa: SLF001 - the only way to read back port 0
            assert server is not None and server.sockets
            self.ports[role] = server.sockets[0].getsockname()[1]
        self.node.start_keepalive()
        if self.node.access.keys is None:
            log.warning(
                "signaling_open_mode",
                detail="no session-token key: any client may register streamers and SFUs under any id "
                "and read every listing (docs/protocol.md, Access)",
            )
        elif not self.node.access.required:
            log.warning("streamer_credentials_optional", detail="streamers without a credential are admitted")
        log.info(
            "signaling_listening",
            host=s.host,
            streamer_host=s.streamer_host,
            node=self.node.broker.node_id,
            **{f"{role.value}_port": port for role, port in self.ports.items()},
        )

    async def stop(self) -> None:
        """Drain: refuse new sockets and answer /readyz 503 for ``drain_delay_s`` (so a load
        balancer stops sending), tell every peer we are restarting (1012: Epic's frontend
        reconnects, through the balancer, to another node), then release the ports and
        leave the cluster."""
        self.node.accepting = False
        if self.settings.drain_delay_s > 0 and self._runners:
            log.info("signaling_draining", node=self.node.broker.node_id, delay_s=self.settings.drain_delay_s)
            await asyncio.sleep(self.settings.drain_delay_s)
        await self.node.stop_keepalive()
        for runner in self._runners.values():
            for site in list(runner.sites):
                await site.stop()
        await self.node.close_all(errors.SERVICE_RESTART, "server shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        while self.node.connections and loop.time() < deadline:  # noqa: ASYNC110 - bounded, shutdown only
            await asyncio.sleep(0.05)
        for runner in self._runners.values():
            await runner.cleanup()
        self._runners.clear()
        await self.node.broker.aclose()
        if self.node.gate is not None:
            await self.node.gate.aclose()
        log.info("signaling_stopped")

    async def __aenter__(self) -> SignalingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
