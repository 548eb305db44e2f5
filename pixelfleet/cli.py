"""The ``pixelfleet`` command: runs one service, or the whole platform with ``up``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import uvloop

from pixelfleet.logs import configure_logging


def _add_signaling_flags(p: argparse.ArgumentParser, *, player_port_default: int | None = None) -> None:
    g = p.add_argument_group("signalling")
    g.add_argument("--host", help="bind address (default 127.0.0.1)")
    g.add_argument("--player-port", type=int, default=player_port_default,
                   help="HTTP port: player page and player WebSocket (default 80)")
    g.add_argument("--streamer-port", type=int, help="streamer WebSocket port (default 8888)")
    g.add_argument("--sfu-port", type=int, help="SFU WebSocket port (default 8889, -1 = off)")
    g.add_argument("--max-players", dest="max_players_per_streamer", type=int,
                   help="subscribers allowed per streamer (0 = unlimited)")
    g.add_argument("--max-message-bytes", type=int, help="largest frame accepted (default 65536)")
    g.add_argument("--player-rate", type=float, help="messages/s per player (average)")
    g.add_argument("--player-burst", type=float, help="message burst per player")
    g.add_argument("--streamer-rate", type=float, help="messages/s per streamer or SFU (average)")
    g.add_argument("--streamer-burst", type=float, help="message burst per streamer or SFU")
    g.add_argument("--peer-options", dest="peer_connection_options", type=json.loads,
                   help="JSON object sent as config.peerConnectionOptions (e.g. iceServers)")
    g.add_argument("--keepalive", dest="keepalive_s", type=float, help="WebSocket ping interval, s")
    g.add_argument("--log-level", help="debug | info | warning | error")
    g.add_argument("--log-format", help="json | console | auto")
    t = p.add_argument_group("TURN (secrets only from PIXELFLEET_TURN__SECRETS, never a flag)")
    t.add_argument("--turn-provider", help="none | static | rest-secret | aws-kvs (default none)")
    t.add_argument("--turn-url", dest="turn_urls", action="append",
                   help="stun:/turn:/turns: URL given to peers (repeat; default none)")
    t.add_argument("--turn-ttl", dest="turn_ttl_s", type=int, help="player credential lifetime, s (default 3600)")
    t.add_argument("--turn-force-relay", action="store_const", const=True,
                   help="testing: tell peers iceTransportPolicy=relay")


_SIGNALING_KEYS = ("host", "player_port", "streamer_port", "sfu_port", "max_players_per_streamer",
                   "max_message_bytes", "player_rate", "player_burst", "streamer_rate",
                   "streamer_burst", "peer_connection_options", "keepalive_s", "log_level",
                   "log_format")


def signaling_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from signaling.config import load_settings

    return load_settings(os.environ, **{k: getattr(args, k, None) for k in _SIGNALING_KEYS})


def turn_settings(args: argparse.Namespace, **overrides: object):  # type: ignore[no-untyped-def]
    from turn.config import load_turn_settings

    flags = {"provider": args.turn_provider, "urls": args.turn_urls, "ttl_s": args.turn_ttl_s,
             "force_relay": args.turn_force_relay}
    return load_turn_settings(os.environ, **{**flags, **overrides})


async def serve_until_signal(start: Callable[[], Awaitable[None]],
                             stop: Callable[[], Awaitable[None]]) -> None:
    """Start, wait for SIGTERM or SIGINT, stop gracefully."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    # Everything allocated so far lives as long as the process: keep it out of the
    # cyclic GC's passes, which otherwise stall the loop more the longer it runs.
    gc.collect()
    gc.freeze()
    try:
        await stopping.wait()
    finally:
        await stop()


def _cmd_signaling(args: argparse.Namespace) -> int:
    from signaling.app import SignalingServer
    from turn.wiring import wire_turn

    settings = signaling_settings(args)
    turn = wire_turn(turn_settings(args), base_options=settings.peer_connection_options)
    configure_logging(settings.log_level, settings.log_format)
    from signaling.sessions import gate_from_settings

    server = SignalingServer(settings, session_gate=gate_from_settings(settings),
                             **(turn.server_kwargs() if turn else {}))

    async def start() -> None:
        if turn:
            await turn.start()
        await server.start()

    async def stop() -> None:
        await server.stop()
        if turn:
            await turn.aclose()

    uvloop.run(serve_until_signal(start, stop))
    return 0


def _cmd_matchmaker(args: argparse.Namespace) -> int:
    from matchmaker.server import MatchmakerServer, load_matchmaker_settings

    settings = load_matchmaker_settings(host=args.host, port=args.port, policy=args.policy,
                                        records_path=args.records)
    configure_logging(args.log_level or "info", args.log_format or "auto")
    server = MatchmakerServer(settings)
    uvloop.run(serve_until_signal(server.start, server.stop))
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from pixelfleet.up import run_up

    return run_up(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Programs with their own argument parsers.
    delegated = {"streamer": "streamer.synthetic", "bench": "loadtest.bench_signaling",
                 "agent": "gpu_agent.__main__"}
    if argv and argv[0] in delegated:
        import importlib

        return int(importlib.import_module(delegated[argv[0]]).main(argv[1:]) or 0)

    parser = argparse.ArgumentParser(prog="pixelfleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_sig = sub.add_parser("signaling", help="run the signalling server")
    _add_signaling_flags(p_sig)
    p_sig.set_defaults(func=_cmd_signaling)

    p_up = sub.add_parser("up", help="the whole platform on this box: signalling + synthetic streamers")
    _add_signaling_flags(p_up, player_port_default=8080)
    p_up.add_argument("--streamers", type=int, default=2, help="synthetic streamers to run")
    p_up.add_argument("--width", type=int, default=1280)
    p_up.add_argument("--height", type=int, default=720)
    p_up.add_argument("--fps", type=int, default=30)
    p_up.add_argument("--no-matchmaker", action="store_true",
                      help="open signalling only: players pick streamers themselves, no session tokens")
    p_up.add_argument("--app", default="default", help="app id the local slots serve (default 'default')")
    p_up.add_argument("--records", help="append ended-session records (JSON lines) to this file")
    p_up.add_argument("--turn", action="store_true",
                      help="start a local coturn (127.0.0.1, generated secret) and hand out its credentials")
    p_up.add_argument("--turn-port", type=int, default=3478, help="local coturn port (default 3478, 0 = any free)")
    p_up.set_defaults(func=_cmd_up)

    p_mm = sub.add_parser("matchmaker", help="run one matchmaker replica (state: PIXELFLEET_STATE_URL)")
    p_mm.add_argument("--host", help="bind address (default 127.0.0.1)")
    p_mm.add_argument("--port", type=int, help="HTTP port (default 9999)")
    p_mm.add_argument("--policy", help="placement: spread | pack")
    p_mm.add_argument("--records", help="append ended-session records (JSON lines) to this file")
    p_mm.add_argument("--log-level", help="debug | info | warning | error")
    p_mm.add_argument("--log-format", help="json | console | auto")
    p_mm.set_defaults(func=_cmd_matchmaker)

    sub.add_parser("agent", help="the GPU agent of one host (see pixelfleet agent --help)")
    sub.add_parser("streamer", help="run one synthetic streamer (see pixelfleet streamer --help)")
    sub.add_parser("bench", help="signalling benchmark (see pixelfleet bench --help)")

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:  # configuration errors: one clear line, non-zero exit
        from signaling.config import ConfigError

        if isinstance(exc, ConfigError):
            print(f"pixelfleet: {exc}", file=sys.stderr)
            return 2
        raise
