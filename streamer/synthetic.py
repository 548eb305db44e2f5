"""A stand-in for an Unreal Engine Pixel Streaming streamer, built on aiortc.

It speaks the streamer side of the signalling protocol the way UE's PS1 plugin does
(``PixelStreamingSignallingConnection.cpp``): answers ``identify`` with
``endpointId``, makes one offer per ``playerConnected``, trickles its ICE candidates
after the offer, tears a peer down on ``playerDisconnected``, pings every 60 s with
Unix seconds, ignores ``pong`` and unknown types, and reconnects with backoff when the
socket drops. Every player gets its own peer connection fed by one shared
``TestPatternSource``; input arriving on any data channel is decoded, recorded in
``input_events`` and drawn into the picture.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from streamer import input_messages as im
from streamer.ice import candidate_from_message, configuration_from_options, split_candidates
from streamer.pattern import TestPatternSource

log = structlog.get_logger(__name__)

InputCallback = Callable[[str, im.InputMessage], None]

PING_INTERVAL_S = 60.0  # UE PS1's keepalive
_PLAYER_SCOPED = {"answer", "iceCandidate", "offer"}


def redacted(text: str) -> str:
    """``text`` with any ``?token=`` value hidden: a streamer credential stays out of logs."""
    return _TOKEN.sub(r"\1…", text)


_TOKEN = re.compile(r"([?&]token=)[^&'\s]+")


class SyntheticStreamer:
    """Connect to a signalling server's streamer port and stream a test pattern.

    ``run()`` keeps connecting until ``stop()``; ``wait_identified()`` returns the
    committed id. ``input_events`` holds ``(player_id, message)`` pairs, newest last.
    """

    def __init__(
        self,
        url: str,
        streamer_id: str = "DefaultStreamer",
        width: int = 1280,
        height: int = 720,
        fps: float = 30,
        *,
        on_input: InputCallback | None = None,
        ping_interval_s: float = PING_INTERVAL_S,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 15.0,
        max_input_events: int = 10_000,
        initial_settings: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.streamer_id = streamer_id
        self.source = TestPatternSource(width, height, fps, label=streamer_id)
        self.on_input = on_input
        self.ping_interval_s = ping_interval_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.initial_settings = initial_settings or im.DEFAULT_INITIAL_SETTINGS
        self.input_events: deque[tuple[str, im.InputMessage]] = deque(maxlen=max_input_events)
        self.committed_id: str | None = None
        self.peer_options: dict[str, Any] = {}
        self.peers: dict[str, PlayerPeer] = {}
        self.connections = 0  # successful signalling connects, reconnects included
        self.last_pong: float | None = None
        self.quality_controller: str | None = None
        self._identified = asyncio.Event()
        self._input_arrived = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._running = False
        self._connecting: asyncio.Future[aiohttp.ClientWebSocketResponse] | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, and reconnect with jittered exponential backoff until ``stop()``."""
        self._running = True
        self._stopped.clear()
        backoff = self.reconnect_min_s
        try:
            async with aiohttp.ClientSession() as session:
                while not self._stopping.is_set():
                    try:
                        ws = await self._connect(session)
                        if ws is None:  # stop() came during the handshake
                            break
                        async with ws:
                            if self._stopping.is_set():  # stop() raced the handshake's end
                                break
                            self._ws = ws
                            self.connections += 1
                            backoff = self.reconnect_min_s
                            log.info("signalling_connected", url=redacted(self.url), streamer=self.streamer_id)
                            await self._serve(ws)
                            log.info("signalling_closed", code=ws.close_code)
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        error = redacted(str(exc)) or type(exc).__name__
                        log.warning("signalling_unreachable", url=redacted(self.url), error=error)
                    finally:
                        self._ws = None
                        self._identified.clear()
                        await self._close_peers()
                    if self._stopping.is_set():
                        break
                    delay = backoff * random.uniform(0.8, 1.2)
                    backoff = min(backoff * 2, self.reconnect_max_s)
                    try:
                        await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                    except TimeoutError:
                        pass
        finally:
            await self._close_peers()
            await self.source.aclose()
            self._running = False
            self._stopped.set()

    async def _connect(self, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse | None:
        """Open the socket; ``None`` when ``stop()`` cancelled the attempt."""
        connect = asyncio.ensure_future(session.ws_connect(self.url, autoping=True, max_msg_size=0))
        self._connecting = connect
        try:
            return await connect
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled, not just the handshake
            return None
        finally:
            self._connecting = None

    async def stop(self) -> None:
        """Close the socket and every peer; ``run()`` returns. Safe to call twice."""
        self._stopping.set()
        if self._connecting is not None:
            self._connecting.cancel()
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close()
        if self._running:
            await self._stopped.wait()
        else:
            await self._close_peers()
            await self.source.aclose()

    async def wait_identified(self, timeout: float = 30.0) -> str:
        """Wait for ``endpointIdConfirm``; returns the id the server committed."""
        await asyncio.wait_for(self._identified.wait(), timeout)
        assert self.committed_id is not None
        return self.committed_id

    async def wait_input(
        self, predicate: Callable[[str, im.InputMessage], bool] | None = None, timeout: float = 10.0
    ) -> tuple[str, im.InputMessage]:
        """Wait for (or find among the recorded ones) an input event matching ``predicate``."""
        async with asyncio.timeout(timeout):
            while True:
                for player_id, message in reversed(self.input_events):
                    if predicate is None or predicate(player_id, message):
                        return player_id, message
                self._input_arrived.clear()
                await self._input_arrived.wait()

    async def disconnect_player(self, player_id: str, reason: str = "") -> None:
        """Ask the server to drop a player (``disconnectPlayer``), as UE's kick does."""
        await self.send({"type": "disconnectPlayer", "playerId": player_id, "reason": reason})

    # --- signalling ----------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> bool:
        """Send one JSON text frame; False when the socket is gone (the message is dropped)."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        async with self._send_lock:
            try:
                await ws.send_str(orjson.dumps(message).decode())
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                return False
        return True

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        pinger = asyncio.create_task(self._ping_forever())
        try:
            async for frame in ws:
                if frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    try:
                        message = orjson.loads(frame.data)
                    except orjson.JSONDecodeError:
                        log.debug("signalling_bad_json")
                        continue
                    if isinstance(message, dict):
                        await self._dispatch(message)
                elif frame.type == aiohttp.WSMsgType.ERROR:
                    break
        finally:
            pinger.cancel()

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            await self.send({"type": "ping", "time": int(time.time())})

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        player_id = message.get("playerId")
        player_id = str(player_id) if player_id is not None else None  # PS1 may use numbers
        if kind == "identify":
            await self.send({"type": "endpointId", "id": self.streamer_id})
        elif kind == "config":
            options = message.get("peerConnectionOptions")
            self.peer_options = options if isinstance(options, dict) else {}
        elif kind == "endpointIdConfirm":
            self.committed_id = str(message.get("committedId") or self.streamer_id)
            self._identified.set()
            log.info("streamer_identified", streamer=self.committed_id)
        elif kind == "playerConnected" and player_id is not None:
            await self._player_connected(player_id, message)
        elif kind == "playerDisconnected" and player_id is not None:
            peer = self.peers.pop(player_id, None)
            if peer is not None:
                await peer.close()
            log.info("player_disconnected", player=player_id, players=len(self.peers))
        elif kind in _PLAYER_SCOPED and player_id is not None:
            peer = self.peers.get(player_id)
            if peer is not None:
                peer.inbox.put_nowait(message)
            else:
                log.debug("message_for_unknown_player", type=kind, player=player_id)
        elif kind == "pong":
            self.last_pong = time.time()
        else:
            log.debug("signalling_ignored", type=kind)

    async def _player_connected(self, player_id: str, message: dict[str, Any]) -> None:
        old = self.peers.pop(player_id, None)
        if old is not None:
            await old.close()
        if message.get("sendOffer", True) is False:
            log.warning("browser_offer_unsupported", player=player_id)
            return
        if message.get("sfu"):
            log.info("sfu_subscriber", player=player_id)  # served like a player, no multiplexing
        peer = PlayerPeer(self, player_id, data_channel=message.get("dataChannel", True) is not False)
        self.peers[player_id] = peer
        log.info("player_connected", player=player_id, players=len(self.peers))
        peer.start()

    async def _close_peers(self) -> None:
        peers, self.peers = list(self.peers.values()), {}
        for peer in peers:
            await peer.close()
        self.quality_controller = None

    # --- input ---------------------------------------------------------------------

    def handle_input(self, player_id: str, data: bytes) -> None:
        """One data-channel message from a player: record it and answer control requests."""
        try:
            message = im.message_from_bytes(data)
        except ValueError as exc:
            log.debug("input_undecodable", player=player_id, error=str(exc))
            return
        self.input_events.append((player_id, message))
        self._input_arrived.set()
        self.source.apply_input(message)
        peer = self.peers.get(player_id)
        if peer is not None:
            if isinstance(message, im.RequestInitialSettings):
                peer.send_data(im.initial_settings_message(self.initial_settings))
            elif isinstance(message, im.RequestQualityControl):
                self._give_quality_control(player_id)
        if self.on_input is not None:
            self.on_input(player_id, message)

    def _give_quality_control(self, player_id: str) -> None:
        """UE keeps one quality controller; tell the new one yes and the old one no."""
        previous, self.quality_controller = self.quality_controller, player_id
        if previous is not None and previous != player_id and previous in self.peers:
            self.peers[previous].send_data(im.quality_control_ownership_message(False))
        self.peers[player_id].send_data(im.quality_control_ownership_message(True))


class PlayerPeer:
    """One player's peer connection. Its signalling messages are handled in order, by
    one task, so an answer or candidate never overtakes the offer it belongs to."""

    def __init__(self, streamer: SyntheticStreamer, player_id: str, *, data_channel: bool) -> None:
        self.streamer = streamer
        self.player_id = player_id
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pc = RTCPeerConnection(configuration_from_options(streamer.peer_options))
        self.track = streamer.source.track()
        self.channel: RTCDataChannel | None = None
        self._want_channel = data_channel
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._teardown()

    def send_data(self, data: bytes) -> None:
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(data)

    async def _run(self) -> None:
        try:
            await self._offer()
            while True:
                await self._handle(await self.inbox.get())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("peer_failed", player=self.player_id)
            await self._teardown()

    async def _offer(self) -> None:
        pc = self.pc
        pc.addTrack(self.track)
        if self._want_channel:
            self.channel = pc.createDataChannel("datachannel", ordered=True)
            self.channel.on("open", self._on_channel_open)
            self.channel.on("message", self._on_channel_message)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            log.info("peer_state", player=self.player_id, state=pc.connectionState)
            if pc.connectionState == "failed":
                await self._teardown()

        await pc.setLocalDescription(await pc.createOffer())
        sdp, candidates = split_candidates(pc.localDescription.sdp)
        await self.streamer.send({"type": "offer", "playerId": self.player_id, "sdp": sdp})
        for candidate in candidates:
            await self.streamer.send({"type": "iceCandidate", "playerId": self.player_id, "candidate": candidate})

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "answer":
            log.debug(
                "answer_received",
                player=self.player_id,
                min_bps=message.get("minBitrateBps", message.get("minBitrate")),
                max_bps=message.get("maxBitrateBps", message.get("maxBitrate")),
            )
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="answer"))
        elif kind == "iceCandidate":
            try:
                candidate = candidate_from_message(message.get("candidate"))
            except ValueError as exc:
                log.debug("bad_candidate", player=self.player_id, error=str(exc))
                return
            if candidate is not None and self.pc.remoteDescription is not None:
                await self.pc.addIceCandidate(candidate)
        else:
            log.debug("peer_message_ignored", player=self.player_id, type=kind)

    def _on_channel_open(self) -> None:
        # What Epic's JSStreamer sends: both protocol tables, then the settings.
        self.send_data(im.protocol_message(0))
        self.send_data(im.protocol_message(1))
        self.send_data(im.initial_settings_message(self.streamer.initial_settings))

    def _on_channel_message(self, data: bytes | str) -> None:
        if isinstance(data, bytes):
            self.streamer.handle_input(self.player_id, data)

    async def _teardown(self) -> None:
        self.track.stop()
        await self.pc.close()


# --- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixelfleet streamer", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="ws://127.0.0.1:8888", help="signalling server streamer URL")
    p.add_argument("--id", dest="streamer_id", default="DefaultStreamer", help="requested streamer id")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=float, default=30)
    p.add_argument("--log-level", default="info", help="debug | info | warning | error")
    p.add_argument("--log-format", default="auto", help="json | console | auto")
    return p


async def _serve_until_signal(streamer: SyntheticStreamer) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(streamer.stop()))
    await streamer.run()


def main(argv: list[str] | None = None) -> int:
    """``pixelfleet streamer``: run one synthetic streamer until SIGTERM/SIGINT."""
    import uvloop

    from pixelfleet.logs import configure_logging

    args = _parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    streamer = SyntheticStreamer(args.url, args.streamer_id, args.width, args.height, args.fps)
    uvloop.run(_serve_until_signal(streamer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
