"""``pixelfleet up``: the whole platform on one box, with embedded backends.

Signalling runs in this process; each synthetic streamer runs as a child process
(as a UE build would), restarted with backoff if it dies, so a crashing streamer
never takes the signalling server with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, Any

import structlog

from pixelfleet.cli import serve_until_signal, signaling_settings, turn_settings
from pixelfleet.logs import configure_logging

from pixelfleet.local_fleet import LocalFleet

if TYPE_CHECKING:
    from matchmaker.service import Matchmaker
    from signaling.app import SignalingServer
    from turn.config import TurnSettings
    from turn.coturn import Coturn

log = structlog.get_logger("up")


class StreamerProcess:
    """One synthetic streamer child, kept running until ``stop()``."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._restarting = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            self._proc = await asyncio.create_subprocess_exec(*self._argv)
            code = await self._proc.wait()
            if self._stopping:
                return
            if self._restarting:  # asked for: no backoff
                self._restarting = False
                continue
            log.warning("streamer_exited", code=code, restart_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def restart(self) -> None:
        """Reset the slot: a fresh streamer process, as an agent resets a UE instance."""
        if self._proc is not None and self._proc.returncode is None:
            self._restarting = True
            self._proc.terminate()

    async def stop(self) -> None:
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _local_coturn(args: argparse.Namespace) -> tuple[Coturn, TurnSettings]:
    """``--turn``: a coturn on loopback with a fresh secret, and settings that use it."""
    import secrets

    from turn.coturn import Coturn, CoturnOptions, free_port

    options = CoturnOptions(secrets=(secrets.token_urlsafe(32),),
                            port=args.turn_port or free_port())
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
    children: list[StreamerProcess] = []
    fleet: LocalFleet | None = None

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
        url = f"ws://{_connect_host(settings.host)}:{server.streamer_port}"
        for i in range(1, args.streamers + 1):
            child = StreamerProcess([
                sys.executable, "-m", "pixelfleet", "streamer", "--url", url,
                "--id", f"Streamer{i}", "--width", str(args.width),
                "--height", str(args.height), "--fps", str(args.fps),
            ])
            child.start()
            children.append(child)
        ids = [f"Streamer{i}" for i in range(1, args.streamers + 1)]
        if matchmaker is not None:
            # Register the slots (starting) before they warm up, so an early player queues
            # instead of hearing that the app does not exist.
            nonlocal fleet
            matchmaker.start()
            fleet = LocalFleet(matchmaker, list(zip(ids, children, strict=True)),
                               connection_of=lambda sid: _identified(server, sid),
                               signaling_url=f"ws://{_connect_host(settings.host)}:{server.player_port}",
                               app=args.app)
            await fleet.beat_ready()
            fleet.start()
        for _ in range(300):  # wait up to 30 s for every streamer to identify
            if all(server.core.streamer_by_id(i) for i in ids):
                break
            await asyncio.sleep(0.1)
        if fleet is not None:
            await fleet.beat_ready()  # READY now, not at the next period
        page = f"http://{_connect_host(settings.host)}:{server.player_port}/"
        how = (f"each tab gets its own slot through the matchmaker; more tabs than {len(ids)} wait in the queue"
               if matchmaker is not None else f"pick one with {page}?StreamerId=<id>")
        print(f"\npixelfleet is up: open {page}\n"
              f"  streamers: {', '.join(ids) or 'none'} ({how})\n"
              f"  UE builds: -PixelStreamingURL=ws://{_connect_host(settings.host)}:{server.streamer_port}\n"
              f"{_turn_banner(coturn, page)}"
              f"  stop with Ctrl+C\n", flush=True)

    async def stop() -> None:
        if fleet is not None:
            await fleet.stop()
        await asyncio.gather(*(c.stop() for c in children))
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

    from matchmaker.config import MatchmakerSettings
    from matchmaker.records import JsonLinesSink, MemorySink
    from matchmaker.service import Matchmaker
    from matchmaker.store import open_store
    from pixelfleet.settings import load_section
    from pixelfleet.tokens import TokenKeys

    mm = load_section(MatchmakerSettings, os.environ, "matchmaker", allow_anonymous=True,
                      records_path=args.records)
    keys = TokenKeys.hs256(mm.token_secret or secrets.token_urlsafe(32))
    sink = JsonLinesSink(mm.records_path) if mm.records_path else MemorySink()
    return Matchmaker(open_store("memory://"), mm, keys, sink)


def _identified(server: SignalingServer, streamer_id: str) -> int | None:
    peer = server.core.streamer_by_id(streamer_id)
    return peer.conn if peer is not None and peer.streaming else None


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
