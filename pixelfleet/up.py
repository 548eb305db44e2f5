"""``pixelfleet up``: the whole platform on one box, with embedded backends.

Signalling runs in this process; the synthetic streamers are the slots of an
embedded GPU agent (``gpu_agent``, the same code as on a fleet host): each runs as a
child process (as a UE build would), restarted with backoff if it dies, so a crashing
streamer never takes the signalling server with it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog

from pixelfleet.cli import serve_until_signal

if TYPE_CHECKING:
    from gpu_agent.agent import Agent
    from gpu_agent.config import AgentSettings
    from matchmaker.service import Matchmaker
    from pixelfleet.settings import PixelfleetSettings
    from turn.config import TurnSettings
    from turn.coturn import Coturn

log = structlog.get_logger("up")


def _local_coturn(args: argparse.Namespace, turn: TurnSettings) -> tuple[Coturn, TurnSettings]:
    """``--turn``: a coturn on loopback with a fresh secret, and settings that use it."""
    import secrets

    from pixelfleet.net import free_port
    from turn.coturn import Coturn, CoturnOptions

    options = CoturnOptions(secrets=(secrets.token_urlsafe(32),), port=args.turn_port or free_port(udp=True))
    turn = msgspec.structs.replace(
        turn, provider="rest-secret", urls=tuple(options.urls), secrets=tuple(options.secrets)
    )
    return Coturn(options), turn


async def _up(args: argparse.Namespace, platform: PixelfleetSettings) -> None:
    from signaling.app import SignalingServer
    from turn.wiring import wire_turn

    settings = platform.signaling
    coturn, turn_config = _local_coturn(args, platform.turn) if args.turn else (None, platform.turn)
    turn = wire_turn(turn_config, base_options=settings.peer_connection_options)
    matchmaker = None if args.no_matchmaker else _embedded_matchmaker(platform)
    extra: dict[str, Any] = dict(turn.server_kwargs()) if turn else {}
    if matchmaker is not None:
        from matchmaker import dashboard
        from matchmaker.http import API_PREFIX, create_app
        from signaling.sessions import CallbackReporter, SessionGate

        extra["player_subapps"] = [
            (API_PREFIX, create_app(matchmaker)),
            (dashboard.PREFIX, dashboard.create_app(matchmaker)),  # the operator dashboard
        ]
        extra["session_gate"] = SessionGate(
            matchmaker.keys,
            required=True,
            reporter=CallbackReporter(
                {"connected": matchmaker.player_connected, "disconnected": matchmaker.player_disconnected}
            ),
        )
    server = SignalingServer(settings, **extra)
    agent: Agent | None = None
    autoscaler: Any = None  # --autoscale: the controller (autoscale/controller.py) sizing the local fleet

    async def start() -> None:
        if coturn is not None:
            await coturn.start()
        try:
            if turn is not None:
                await turn.start()
            await server.start()
        except BaseException:
            await stop()
            raise
        ids = [] if args.autoscale else [f"Streamer{i}" for i in range(1, args.streamers + 1)]
        if matchmaker is not None:
            matchmaker.start()
            if args.autoscale:  # hosts come and go with demand (docs/autoscaling.md)
                from autoscale.local_up import start_autoscaler

                nonlocal autoscaler
                autoscaler = await start_autoscaler(args, platform, server, matchmaker)
        if ids:
            nonlocal agent
            agent = _embedded_agent(args, platform, server, matchmaker)
            await agent.start()
            if agent.reporter is not None:
                # Register the slots (starting) before they warm up, so an early player queues
                # instead of hearing that the app does not exist.
                await agent.reporter.beat_now()
            await agent.wait_ready(30)  # every streamer streaming in signalling
            if agent.reporter is not None:
                await agent.reporter.beat_now()  # READY now, not at the next period
        page = f"http://{_connect_host(settings.host)}:{server.player_port}/"
        how = (
            f"each tab gets its own slot through the matchmaker; more tabs than {len(ids)} wait in the queue"
            if matchmaker is not None
            else f"pick one with {page}?StreamerId=<id>"
        )
        print(
            f"\npixelfleet is up: open {page}\n"
            f"  streamers: {', '.join(ids) or 'none'} ({how})\n"
            f"  UE builds: -PixelStreamingURL=ws://{_connect_host(settings.host)}:{server.streamer_port}\n"
            f"{_turn_banner(coturn, page)}"
            f"  stop with Ctrl+C\n",
            flush=True,
        )

    async def stop() -> None:
        if autoscaler is not None:
            await autoscaler.aclose()
        if agent is not None:
            await agent.stop()
        await server.stop()
        if matchmaker is not None:
            await matchmaker.aclose()
        if turn is not None:
            await turn.aclose()
        if coturn is not None:
            await coturn.stop()

    await serve_until_signal(start, stop)


def _turn_banner(coturn: Coturn | None, page: str) -> str:
    if coturn is None:
        return ""
    o = coturn.options
    return (
        f"  TURN: coturn on {o.host}:{o.port} (this box only), credentials at {page}api/turn-credentials\n"
        f"        relay-only test: {page}?ForceTURN=1\n"
    )


def _embedded_matchmaker(platform: PixelfleetSettings) -> Matchmaker:
    """In-memory matchmaker; anonymous players are tenant ``default`` (one box, one owner)."""
    import secrets

    from matchmaker.server import build_matchmaker

    settings = msgspec.structs.replace(platform.matchmaker, state_url="memory://", allow_anonymous=True)
    if not settings.session_token_secret:  # one process mints and verifies: any fresh secret will do
        settings = msgspec.structs.replace(settings, session_token_secret=secrets.token_urlsafe(32))
    return build_matchmaker(settings)


class _Ports(Protocol):
    """Where the streamers connect: the signalling server, or ``up --nodes``' balancer."""

    @property
    def player_port(self) -> int: ...
    @property
    def streamer_port(self) -> int: ...


def _embedded_agent(
    args: argparse.Namespace,
    platform: PixelfleetSettings,
    server: _Ports,
    matchmaker: Matchmaker | None,
) -> Agent:
    """The local synthetic streamers as the slots of one host, ``Streamer1..N``."""
    from gpu_agent.agent import Agent
    from gpu_agent.client import LocalMatchmakerClient

    settings = local_agent_settings(
        args, platform, server, host_id="local", slots=args.streamers, streamer_id="Streamer{n}"
    )
    return Agent(settings, LocalMatchmakerClient(matchmaker) if matchmaker is not None else None)


def local_agent_settings(
    args: argparse.Namespace,
    platform: PixelfleetSettings,
    server: _Ports,
    *,
    host_id: str,
    slots: int,
    streamer_id: str,
) -> AgentSettings:
    """An agent on this box: its slots run synthetic streamers against this box's signalling
    (``up`` and ``up --autoscale`` make their hosts with it)."""
    host = _connect_host(platform.signaling.host)
    return msgspec.structs.replace(
        platform.agent,
        host_id=host_id,
        streamer="synthetic",
        slots=slots,
        streamer_id=streamer_id,
        app=args.app,
        signaling_url=f"ws://{host}:{server.player_port}",
        streamer_url=f"ws://{host}:{server.streamer_port}",
        signaling_api_url=f"http://{host}:{server.player_port}",
        res_x=args.width,
        res_y=args.height,
        fps=args.fps,
        heartbeat_period_s=1.0,
    )


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)


def run_up(args: argparse.Namespace, settings: PixelfleetSettings) -> int:
    import uvloop

    if args.autoscale and (args.no_matchmaker or args.nodes != 1):
        print("pixelfleet up: --autoscale needs the embedded matchmaker on one node", file=sys.stderr)
        return 2
    if args.autoscale_config:  # read before anything starts: a bad file is one line, not a traceback
        from autoscale.local_up import load_local_config

        try:
            load_local_config(args.autoscale_config)
        except ValueError as exc:
            print(f"pixelfleet up: {exc}", file=sys.stderr)
            return 2
    if args.nodes != 1:  # a cluster on this box: pixelfleet/up_cluster.py
        from pixelfleet.up_cluster import run_cluster

        return run_cluster(args, settings)
    if args.turn:
        from turn.coturn import CoturnError, find_turnserver

        try:
            find_turnserver()
        except CoturnError as exc:
            print(f"pixelfleet up --turn: {exc}", file=sys.stderr)
            return 2
    try:
        uvloop.run(_up(args, settings))
    except Exception as exc:
        from turn.coturn import CoturnError

        if isinstance(exc, CoturnError):
            print(f"pixelfleet up --turn: {exc}", file=sys.stderr)
            return 2
        raise
    return 0
