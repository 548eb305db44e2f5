"""The ``pixelfleet`` command: runs one service, or the whole platform with ``up``.

Settings are loaded here, once, from the environment and the flags
(``pixelfleet.settings``); each command gets the result. A flag's ``dest`` is the
setting it sets (``signaling.player_port``, ``matchmaker.policy``, ``log_level``).
Secrets have no flags: ``ps`` shows every process's arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pixelfleet import __version__

if TYPE_CHECKING:
    from pixelfleet.settings import PixelfleetSettings


def _add_logging_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", dest="log_level", help="debug | info | warning | error (default info)")
    p.add_argument("--log-format", dest="log_format", help="json | console | auto (default auto)")


def _add_signaling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("signalling")
    g.add_argument("--host", dest="signaling.host", help="bind address (default 127.0.0.1)")
    g.add_argument(
        "--player-port",
        dest="signaling.player_port",
        type=int,
        help="HTTP port: player page and player WebSocket (default 80; up: 8080)",
    )
    g.add_argument(
        "--streamer-port", dest="signaling.streamer_port", type=int, help="streamer WebSocket port (default 8888)"
    )
    g.add_argument(
        "--sfu-port", dest="signaling.sfu_port", type=int, help="SFU WebSocket port (default 8889, -1 = off)"
    )
    g.add_argument(
        "--node-id", dest="signaling.node_id", help="this node's name in a signalling cluster (default random)"
    )
    g.add_argument(
        "--max-players",
        dest="signaling.max_players_per_streamer",
        type=int,
        help="subscribers allowed per streamer (0 = unlimited)",
    )
    g.add_argument(
        "--max-message-bytes",
        dest="signaling.max_message_bytes",
        type=int,
        help="largest frame accepted (default 65536)",
    )
    g.add_argument("--player-rate", dest="signaling.player_rate", type=float, help="messages/s per player (average)")
    g.add_argument("--player-burst", dest="signaling.player_burst", type=float, help="message burst per player")
    g.add_argument(
        "--streamer-rate", dest="signaling.streamer_rate", type=float, help="messages/s per streamer or SFU (average)"
    )
    g.add_argument(
        "--streamer-burst", dest="signaling.streamer_burst", type=float, help="message burst per streamer or SFU"
    )
    g.add_argument(
        "--peer-options",
        dest="signaling.peer_connection_options",
        type=json.loads,
        help="JSON object sent as config.peerConnectionOptions (e.g. iceServers)",
    )
    g.add_argument("--keepalive", dest="signaling.keepalive_s", type=float, help="WebSocket ping interval, s")
    g.add_argument(
        "--shutdown-grace",
        dest="signaling.shutdown_grace_s",
        type=float,
        help="how long SIGTERM waits for peers to close, s (default 5)",
    )
    g.add_argument("--static-dir", dest="signaling.static_dir", help="serve this player page (default: bundled)")
    g.add_argument(
        "--state-url",
        dest="state_url",
        help="shared state: memory:// (one node, default) or redis://... (a node of a cluster)",
    )
    g.add_argument(
        "--matchmaker-url",
        dest="signaling.matchmaker_url",
        help="report players' connects and leaves to this matchmaker (session tokens)",
    )
    _add_logging_flags(p)
    t = p.add_argument_group("TURN (secrets only from PIXELFLEET_TURN__SECRETS, never a flag)")
    t.add_argument("--turn-provider", dest="turn.provider", help="none | static | rest-secret | aws-kvs (default none)")
    t.add_argument(
        "--turn-url",
        dest="turn.urls",
        action="append",
        help="stun:/turn:/turns: URL given to peers (repeat; default none)",
    )
    t.add_argument("--turn-ttl", dest="turn.ttl_s", type=int, help="player credential lifetime, s (default 3600)")
    t.add_argument(
        "--turn-force-relay",
        dest="turn.force_relay",
        action="store_const",
        const=True,
        help="testing: tell peers iceTransportPolicy=relay",
    )


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags set: every dest that names one (unset flags are None)."""
    from pixelfleet.shared_settings import SharedSettings

    return {k: v for k, v in vars(args).items() if "." in k or k in SharedSettings.__struct_fields__}


async def serve_until_signal(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
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


def _cmd_signaling(args: argparse.Namespace, settings: PixelfleetSettings) -> int:
    import uvloop

    from signaling.app import SignalingServer
    from signaling.sessions import gate_from_settings, verify_keys
    from turn.wiring import wire_turn

    s = settings.signaling
    keys = verify_keys(s)  # streamer credentials too (issue 11); None = open mode, warned at start
    turn = wire_turn(settings.turn, base_options=s.peer_connection_options, keys=keys)
    server = SignalingServer(
        s, session_gate=gate_from_settings(s), streamer_keys=keys, **(turn.server_kwargs() if turn else {})
    )

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


def _cmd_matchmaker(args: argparse.Namespace, settings: PixelfleetSettings) -> int:
    import uvloop

    from matchmaker.server import MatchmakerServer

    server = MatchmakerServer(settings.matchmaker)
    uvloop.run(serve_until_signal(server.start, server.stop))
    return 0


def _cmd_up(args: argparse.Namespace, settings: PixelfleetSettings) -> int:
    from pixelfleet.up import run_up

    return run_up(args, settings)


def _cmd_agent(args: argparse.Namespace, settings: PixelfleetSettings) -> int:
    from gpu_agent.__main__ import run

    return run(settings.agent)


def _cmd_agent_token(args: argparse.Namespace, settings: PixelfleetSettings) -> int:
    """Mint one host's agent token (issue 11): it speaks for that host and its tenants only."""
    from matchmaker.auth import mint_agent_token
    from pixelfleet.shared_settings import ConfigError

    mm = settings.matchmaker
    if not mm.agent_key_secret:
        raise ConfigError("set PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET (the matchmaker's, >= 32 bytes)")
    try:
        token = mint_agent_token(
            mm.agent_key_secret, host_id=args.token_host, tenants=args.token_tenants, ttl_s=mm.agent_token_ttl_s
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(token)
    return 0


def _cmd_streamer_token(args: argparse.Namespace, settings: PixelfleetSettings) -> int:
    """Mint one streamer credential (issue 11), for a streamer no agent launches: a UE
    build started by hand against signalling with a token key carries it as
    ``-PixelStreamingURL="ws://HOST:8888/?token=<credential>"``. An SFU's is the same
    credential: its id is the ``endpointId`` the SFU registers and its tenant the only
    one whose streamers the SFU can subscribe to."""
    from matchmaker.server import token_keys
    from pixelfleet.shared_settings import ConfigError
    from pixelfleet.tokens import mint_streamer

    mm = settings.matchmaker
    try:
        token = mint_streamer(
            token_keys(mm),
            tenant=args.token_tenant,
            host_id=args.token_host or args.token_streamer,
            streamer_id=args.token_streamer,
            ttl_s=mm.streamer_token_ttl_s,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(token)
    return 0


def _cmd_records_summary(args: argparse.Namespace) -> int:
    from matchmaker.records_summary import run_summary

    return run_summary(args.files, as_json=args.json, skip_invalid=args.skip_invalid)


def _add_records_command(sub: Any) -> None:
    """``pixelfleet records summary FILE...``: reads records files, needs no settings."""
    p_rec = sub.add_parser("records", help="ended-session records (docs/records.md)")
    rec = p_rec.add_subparsers(dest="records_command", required=True)
    p_sum = rec.add_parser(
        "summary",
        help="sessions, minutes and GPU-hours per tenant, app and end reason",
        description="Sessions, connected minutes and GPU-hours per tenant, app and end reason, from "
        "records files (each session counted once, however often it was written). An invalid line "
        "is an error naming its file and line (exit 2) unless --skip-invalid.",
    )
    p_sum.add_argument("files", nargs="+", metavar="FILE", help="a records file (--records FILE), one or more")
    p_sum.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_sum.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip invalid lines (each named on stderr, counted in the output) instead of failing",
    )
    p_sum.set_defaults(run=_cmd_records_summary)


def _parser() -> argparse.ArgumentParser:
    from gpu_agent.__main__ import add_agent_flags

    parser = argparse.ArgumentParser(
        prog="pixelfleet",
        description=__doc__.split("\n")[0],
        epilog="Every setting and its PIXELFLEET_* variable: docs/configuration.md",
    )
    parser.add_argument("--version", action="version", version=f"pixelfleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_sig = sub.add_parser("signaling", help="run the signalling server")
    _add_signaling_flags(p_sig)
    p_sig.set_defaults(func=_cmd_signaling, defaults={})

    p_up = sub.add_parser("up", help="the whole platform on this box: signalling + synthetic streamers")
    _add_signaling_flags(p_up)
    p_up.add_argument("--streamers", type=int, default=2, help="synthetic streamers to run")
    p_up.add_argument("--width", type=int, default=1280)
    p_up.add_argument("--height", type=int, default=720)
    p_up.add_argument("--fps", type=int, default=30)
    p_up.add_argument(
        "--no-matchmaker",
        action="store_true",
        help="open signalling only: players pick streamers themselves, no session tokens",
    )
    p_up.add_argument("--app", default="default", help="app id the local slots serve (default 'default')")
    p_up.add_argument(
        "--autoscale",
        action="store_true",
        help="size the local fleet with the forecast autoscaler instead of --streamers (docs/autoscaling.md)",
    )
    p_up.add_argument("--autoscale-config", metavar="FILE", help="--autoscale settings, JSON (docs/autoscaling.md)")
    p_up.add_argument("--autoscale-log", metavar="FILE", help="--autoscale: append every decision to FILE (JSON lines)")
    p_up.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="signalling nodes (default 1); more: a local Redis, N node processes, a TCP balancer on the usual ports",
    )
    p_up.add_argument(
        "--records",
        dest="matchmaker.records_path",
        help="append ended-session records (JSON lines) to this file (default: the last 10,000 in memory)",
    )
    p_up.add_argument(
        "--turn",
        action="store_true",
        help="start a local coturn (127.0.0.1, generated secret) and hand out its credentials",
    )
    p_up.add_argument("--turn-port", type=int, default=3478, help="local coturn port (default 3478, 0 = any free)")
    # up's own defaults: below the environment and flags. The agent's metrics port is off
    # unless asked for (one box already has signalling's status API).
    p_up.set_defaults(func=_cmd_up, defaults={"signaling.player_port": 8080, "agent.metrics_port": -1})

    p_mm = sub.add_parser("matchmaker", help="run one matchmaker replica (state: PIXELFLEET_STATE_URL)")
    p_mm.add_argument("--host", dest="matchmaker.host", help="bind address (default 127.0.0.1)")
    p_mm.add_argument("--port", dest="matchmaker.port", type=int, help="HTTP port (default 9999)")
    p_mm.add_argument("--policy", dest="matchmaker.policy", help="placement: spread | pack (default spread)")
    p_mm.add_argument("--key-prefix", dest="matchmaker.key_prefix", help="Redis key prefix (default pf)")
    p_mm.add_argument(
        "--records",
        dest="matchmaker.records_path",
        help="append ended-session records (JSON lines) to this file (default: only the last "
        "--records-memory-max kept in memory)",
    )
    p_mm.add_argument(
        "--records-memory-max",
        dest="matchmaker.records_memory_max",
        type=int,
        help="without --records: how many ended-session records memory keeps (default 10000)",
    )
    _add_logging_flags(p_mm)
    p_mm.set_defaults(func=_cmd_matchmaker, defaults={})

    p_agent = sub.add_parser(
        "agent",
        help="the GPU agent of one host",
        epilog="Every setting is also PIXELFLEET_AGENT__<NAME>; tokens only from the "
        "environment (PIXELFLEET_AGENT_TOKEN, PIXELFLEET_ADMIN_TOKEN).",
    )
    add_agent_flags(p_agent)
    _add_logging_flags(p_agent)
    p_agent.set_defaults(func=_cmd_agent, defaults={})

    p_tok = sub.add_parser(
        "agent-token",
        help="print a per-host agent token (PIXELFLEET_AGENT_TOKEN of that host)",
        epilog="Signed with PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET; docs/operations.md.",
    )
    p_tok.add_argument("--host", dest="token_host", required=True, help="the host id it speaks for")
    p_tok.add_argument(
        "--tenant", dest="token_tenants", action="append", required=True, help="a tenant it may serve (repeat)"
    )
    p_tok.add_argument("--ttl-s", dest="matchmaker.agent_token_ttl_s", type=int, help="lifetime (default 1 year)")
    _add_logging_flags(p_tok)
    p_tok.set_defaults(func=_cmd_agent_token, defaults={})

    p_stok = sub.add_parser(
        "streamer-token",
        help="print a streamer or SFU credential (the ?token= of its signalling URL)",
        epilog="Signed with the session-token key (PIXELFLEET_SESSION_TOKEN_SECRET, or the EdDSA "
        "key files); docs/protocol.md, Streamer credentials.",
    )
    who = p_stok.add_mutually_exclusive_group(required=True)
    who.add_argument("--streamer", dest="token_streamer", metavar="ID", help="the streamer id it admits")
    who.add_argument("--sfu", dest="token_streamer", metavar="ID", help="the SFU id it admits (its endpointId)")
    p_stok.add_argument("--host", dest="token_host", metavar="H", help="the host id it names (hid; default: the id)")
    p_stok.add_argument("--tenant", dest="token_tenant", required=True, help="the tenant it serves (sub)")
    p_stok.add_argument(
        "--ttl-s", dest="matchmaker.streamer_token_ttl_s", type=int, help="lifetime in seconds (default 900)"
    )
    _add_logging_flags(p_stok)
    p_stok.set_defaults(func=_cmd_streamer_token, defaults={})

    _add_records_command(sub)
    sub.add_parser("streamer", help="run one synthetic streamer (see pixelfleet streamer --help)")
    sub.add_parser("bench", help="signalling benchmark (see pixelfleet bench --help)")
    sub.add_parser("loadtest", help="load test the platform from a scenario file (docs/loadtest.md)")
    sub.add_parser("simulate", help="autoscaling simulator (see pixelfleet simulate --help)")
    sub.add_parser("autoscale", help="autoscale one pool of a cloud fleet (see pixelfleet autoscale --help)")
    for command in sub.choices.values():  # --player-port PLAYER_PORT, not SIGNALING.PLAYER_PORT
        for action in command._actions:  # noqa: SLF001 - argparse keeps them only here
            if action.metavar is None and action.nargs != 0 and "." in action.dest:
                action.metavar = action.dest.rpartition(".")[2].upper()
    return parser


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``environ``: the environment to read settings from (tests pass their own)."""
    argv = sys.argv[1:] if argv is None else argv
    # Programs with their own argument parsers and no platform settings.
    delegated = {
        "streamer": "streamer.synthetic",
        "bench": "loadtest.bench_signaling",
        "loadtest": "loadtest.engine",  # load tester (docs/loadtest.md)
        "simulate": "autoscale.simulate.cli",  # autoscaling simulator (docs/autoscaling.md)
        "autoscale": "autoscale.run",  # one pool's autoscaler, aws-asg (docs/autoscaling.md)
    }
    if argv and argv[0] in delegated:
        import importlib

        return int(importlib.import_module(delegated[argv[0]]).main(argv[1:]) or 0)

    from pixelfleet.logs import configure_logging
    from pixelfleet.settings import ConfigError, load_settings

    args = _parser().parse_args(argv)
    if args.command == "records":  # reads files only: no platform settings to load
        return int(args.run(args))
    try:
        settings = load_settings(os.environ if environ is None else environ, defaults=args.defaults, flags=_flags(args))
        configure_logging(settings.log_level, settings.log_format)
        from pixelfleet.tracing import configure_tracing

        configure_tracing(settings.otlp_endpoint, f"pixelfleet-{args.command}")
        return int(args.func(args, settings))
    except ConfigError as exc:  # a bad setting: one clear line, exit 2, no traceback
        print(f"pixelfleet {args.command}: {exc}", file=sys.stderr)
        return 2
