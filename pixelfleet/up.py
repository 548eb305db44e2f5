"""``pixelfleet up``: the whole platform on one box, with embedded backends.

Signalling runs in this process; the synthetic streamers are the slots of an
embedded GPU agent (``gpu_agent``, the same code as on a fleet host): each runs as a
child process (as a UE build would), restarted with backoff if it dies, so a crashing
streamer never takes the signalling server with it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import structlog

from pixelfleet.cli import serve_until_signal, signaling_settings, turn_settings
from pixelfleet.logs import configure_logging

if TYPE_CHECKING:
    from gpu_agent.agent import Agent
    from matchmaker.service import Matchmaker
    from signaling.app import SignalingServer
    from turn.config import TurnSettings
    from turn.coturn import Coturn

log = structlog.get_logger("up")


def _local_coturn(args: argparse.Namespace) -> tuple[Coturn, TurnSettings]:
    """``--turn``: a coturn on loopback with a fresh secret, and settings that use it."""
    import secrets

    from pixelfleet.net import free_port
    from turn.coturn import Coturn, CoturnOptions

    options = CoturnOptions(secrets=(secrets.token_urlsafe(32),),
                            port=args.turn_port or free_port(udp=True))
    turn = turn_settings(args, provider="rest-secret", urls=list(options.urls),
                         secrets=list(options.secrets))
    return Coturn(options), turn


async def _up(args: argparse.Namespace) -> None:
    from signaling.app import SignalingServer
    from turn.wiring import wire_turn

    settings = signaling_settings(args)
    coturn, turn_config = _local_coturn(args) if args.turn else (None, turn_settings(args))
    turn = wire_turn(turn_config, base_options=settings.peer_connection_options)
    matchmaker = None if args.no_matchmaker else _embedded_matchmaker(args)
    extra: dict[str, Any] = dict(turn.server_kwargs()) if turn else {}
    if matchmaker is not None:
        from matchmaker.http import API_PREFIX, create_app
        from signaling.sessions import CallbackReporter, SessionGate

        extra["player_subapps"] = [(API_PREFIX, create_app(matchmaker))]
        extra["session_gate"] = SessionGate(matchmaker.keys, required=True, reporter=CallbackReporter(
            {"connected": matchmaker.player_connected, "disconnected": matchmaker.player_disconnected}))
    server = SignalingServer(settings, **extra)
    agent: Agent | None = None

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
        ids = [f"Streamer{i}" for i in range(1, args.streamers + 1)]
        if matchmaker is not None:
            matchmaker.start()
        if ids:
            nonlocal agent
            agent = _embedded_agent(args, server, settings.host, matchmaker)
            await agent.start()
            if agent.reporter is not None:
                # Register the slots (starting) before they warm up, so an early player queues
                # instead of hearing that the app does not exist.
                await agent.reporter.beat_now()
            await agent.wait_ready(30)  # every streamer streaming in signalling
            if agent.reporter is not None:
                await agent.reporter.beat_now()  # READY now, not at the next period
        page = f"http://{_connect_host(settings.host)}:{server.player_port}/"
        how = (f"each tab gets its own slot through the matchmaker; more tabs than {len(ids)} wait in the queue"
               if matchmaker is not None else f"pick one with {page}?StreamerId=<id>")
        print(f"\npixelfleet is up: open {page}\n"
              f"  streamers: {', '.join(ids) or 'none'} ({how})\n"
              f"  UE builds: -PixelStreamingURL=ws://{_connect_host(settings.host)}:{server.streamer_port}\n"
              f"{_turn_banner(coturn, page)}"
              f"  stop with Ctrl+C\n", flush=True)

    async def stop() -> None:
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
    return (f"  TURN: coturn on {o.host}:{o.port} (this box only), credentials at {page}api/turn-credentials\n"
            f"        relay-only test: {page}?ForceTURN=1\n")


def _embedded_matchmaker(args: argparse.Namespace) -> Matchmaker:
    """In-memory matchmaker; anonymous players are tenant ``default`` (one box, one owner)."""
    import os
    import secrets

    import msgspec

    from matchmaker.server import build_matchmaker, load_matchmaker_settings

    settings = load_matchmaker_settings(os.environ, state_url="memory://", allow_anonymous=True,
                                        records_path=args.records)
    if not settings.token_secret:  # one process mints and verifies: any fresh secret will do
        settings = msgspec.structs.replace(settings, token_secret=secrets.token_urlsafe(32))
    return build_matchmaker(settings)


def _embedded_agent(args: argparse.Namespace, server: SignalingServer, bind: str,
                    matchmaker: Matchmaker | None) -> Agent:
    """The local synthetic streamers as the slots of one host, ``Streamer1..N``."""
    import os

    from gpu_agent.agent import Agent
    from gpu_agent.client import LocalMatchmakerClient
    from gpu_agent.config import load_agent_settings

    host = _connect_host(bind)
    metrics = None if "PIXELFLEET_AGENT__METRICS_PORT" in os.environ else -1
    settings = load_agent_settings(
        os.environ, host_id="local", streamer="synthetic", slots=args.streamers, streamer_id="Streamer{n}",
        app=args.app, signaling_url=f"ws://{host}:{server.player_port}",
        streamer_url=f"ws://{host}:{server.streamer_port}", signaling_api_url=f"http://{host}:{server.player_port}",
        res_x=args.width, res_y=args.height, fps=args.fps, heartbeat_period_s=1.0, metrics_port=metrics)
    return Agent(settings, LocalMatchmakerClient(matchmaker) if matchmaker is not None else None)


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)


def run_up(args: argparse.Namespace) -> int:
    import uvloop

    settings = signaling_settings(args)
    configure_logging(settings.log_level, settings.log_format)
    if args.turn:
        from turn.coturn import CoturnError, find_turnserver

        try:
            find_turnserver()
        except CoturnError as exc:
            print(f"pixelfleet up --turn: {exc}", file=sys.stderr)
            return 2
    try:
        uvloop.run(_up(args))
    except Exception as exc:
        from turn.coturn import CoturnError

        if isinstance(exc, CoturnError):
            print(f"pixelfleet up --turn: {exc}", file=sys.stderr)
            return 2
        raise
    return 0
