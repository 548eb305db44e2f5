"""A minimal Pixel Streaming player on aiortc, for tests and load tools.

It behaves like Epic's browser frontend where the server can tell: sends
``listStreamers`` as soon as the socket opens, subscribes to the wanted (or the only
/ first) streamer, polls the list while none is there, answers the streamer's offer
with ``minBitrateBps``/``maxBitrateBps``, trickles its candidates, answers server
pings, and after the streamer's ``Protocol`` message asks for the initial settings
and quality control. Video is decoded and counted (``frames_received``); input goes
out over the data channel in Epic's binary format.

    async with SyntheticPlayer("ws://127.0.0.1:80") as player:
        await player.wait_frames(10)
        await player.send_mouse_move(32768, 32768)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import av
import orjson
import structlog
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from streamer import input_messages as im
from streamer.ice import candidate_from_message, configuration_from_options, split_candidates

log = structlog.get_logger(__name__)


class SyntheticPlayer:
    """One player connection. ``streamer_id=None`` subscribes to the first listed streamer."""

    def __init__(
        self,
        url: str,
        streamer_id: str | None = None,
        *,
        list_interval_s: float = 0.5,
        ping_interval_s: float = 30.0,
        mimic_frontend: bool = True,
        answer_fields: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.streamer_id = streamer_id
        self.list_interval_s = list_interval_s
        self.ping_interval_s = ping_interval_s
        self.mimic_frontend = mimic_frontend
        # The 5.5+ frontend adds these to every answer; <=5.4 sent minBitrate/maxBitrate.
        default_fields = {"minBitrateBps": 0, "maxBitrateBps": 0}
        self.answer_fields = default_fields if answer_fields is None else answer_fields
        self.peer_options: dict[str, Any] = {}
        self.player_id: str | None = None
        self.subscribed_to: str | None = None
        self.subscribe_failed: str | None = None
        self.frames_received = 0
        self.last_frame: av.VideoFrame | None = None
        self.streamer_messages: list[im.StreamerMessage] = []
        self.received: list[dict[str, Any]] = []  # every signalling message, for assertions
        self.close_code: int | None = None
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()  # set on every frame / message, for the waiters
        self._channel_open = asyncio.Event()
        self._closed = asyncio.Event()

    async def __aenter__(self) -> SyntheticPlayer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- lifecycle -----------------------------------------------------------------

    async def connect(self) -> None:
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(self.url, autoping=True, max_msg_size=0)
        except BaseException:
            await self._session.close()
            raise
        self._spawn(self._read())
        self._spawn(self._ping_forever())
        await self.send({"type": "listStreamers"})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.pc is not None:
            await self.pc.close()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- waiting -------------------------------------------------------------------

    async def _until(self, condition: Any, timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None

    async def wait_frames(self, count: int, timeout: float = 30.0) -> int:
        """Wait until ``frames_received >= count``; returns ``frames_received``."""
        await self._until(lambda: self.frames_received >= count, timeout, f"{count} frames")
        return self.frames_received

    async def wait_data_channel(self, timeout: float = 30.0) -> RTCDataChannel:
        await asyncio.wait_for(self._channel_open.wait(), timeout)
        assert self.channel is not None
        return self.channel

    async def wait_streamer_message(self, name: str, timeout: float = 10.0) -> im.StreamerMessage:
        """The first data-channel message of that kind (``"Protocol"``, ``"InitialSettings"``…)."""

        def found() -> im.StreamerMessage | None:
            return next((m for m in self.streamer_messages if m.name == name), None)

        await self._until(lambda: found() is not None, timeout, name)
        message = found()
        assert message is not None
        return message

    @property
    def closed(self) -> bool:
        """Whether the signalling socket has closed (by either side)."""
        return self._closed.is_set()

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Wait for the server to close the socket; returns the close code."""
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.close_code

    # --- signalling ----------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.send_str(orjson.dumps(message).decode())

    async def subscribe(self, streamer_id: str) -> None:
        self.streamer_id = streamer_id
        await self.send({"type": "subscribe", "streamerId": streamer_id})
        self.subscribed_to = streamer_id

    async def unsubscribe(self) -> None:
        await self.send({"type": "unsubscribe"})
        self.subscribed_to = None

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    continue
                message = orjson.loads(frame.data)
                if isinstance(message, dict):
                    self.received.append(message)
                    await self._dispatch(message)
                    self._progress.set()
        finally:
            self.close_code = self._ws.close_code
            self._closed.set()
            self._progress.set()

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            await self.send({"type": "ping", "time": int(time.time() * 1000)})  # ms, like browsers

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "config":
            options = message.get("peerConnectionOptions")
            self.peer_options = options if isinstance(options, dict) else {}
        elif kind == "streamerList":
            await self._choose(list(message.get("ids") or []))
        elif kind == "offer":
            await self._answer(message)
        elif kind == "iceCandidate":
            await self._add_candidate(message.get("candidate"))
        elif kind == "ping":
            await self.send({"type": "pong", "time": message.get("time")})
        elif kind == "subscribeFailed":
            self.subscribe_failed = str(message.get("message", ""))
            self.subscribed_to = None
        elif kind in ("streamerIdChanged", "streamerIDChanged"):
            self.subscribed_to = message.get("newID", self.subscribed_to)

    async def _choose(self, ids: list[str]) -> None:
        if self.subscribed_to is not None:
            return
        wanted = self.streamer_id
        chosen = wanted if wanted in ids else (ids[0] if ids and wanted is None else None)
        if chosen is not None:
            await self.subscribe(chosen)
        else:
            self._spawn(self._list_later())

    async def _list_later(self) -> None:
        await asyncio.sleep(self.list_interval_s)
        await self.send({"type": "listStreamers"})

    async def _answer(self, message: dict[str, Any]) -> None:
        if message.get("playerId"):
            self.player_id = str(message["playerId"])
        if self.pc is not None:
            await self.pc.close()
        self._channel_open.clear()
        pc = self.pc = RTCPeerConnection(configuration_from_options(self.peer_options))
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sdp, candidates = split_candidates(pc.localDescription.sdp)
        await self.send({"type": "answer", "sdp": sdp, **self.answer_fields})
        for candidate in candidates:
            await self.send({"type": "iceCandidate", "candidate": candidate})

    async def _add_candidate(self, raw: Any) -> None:
        try:
            candidate = candidate_from_message(raw)
        except ValueError as exc:
            log.debug("bad_candidate", error=str(exc))
            return
        if candidate is not None and self.pc is not None and self.pc.remoteDescription is not None:
            await self.pc.addIceCandidate(candidate)

    # --- media and data ------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._spawn(self._count_frames(track))

    async def _count_frames(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames_received += 1
            self.last_frame = frame  # type: ignore[assignment]
            self._progress.set()

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        channel.on("message", self._on_channel_message)
        if channel.readyState == "open":
            self._channel_open.set()
        else:
            channel.on("open", self._channel_open.set)

    def _on_channel_message(self, data: bytes | str) -> None:
        if not isinstance(data, bytes):
            return
        try:
            message = im.streamer_message_from_bytes(data)
        except ValueError:
            return
        self.streamer_messages.append(message)
        self._progress.set()
        if self.mimic_frontend and message.name == "Protocol" and message.text:
            # The frontend asks for these once a protocol arrives (WebRtcPlayerController).
            if '"Direction":0' in message.text.replace(" ", ""):
                self.send_input_nowait(im.RequestInitialSettings())
                self.send_input_nowait(im.RequestQualityControl())

    # --- input ---------------------------------------------------------------------

    def send_input_nowait(self, message: im.InputMessage) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            raise RuntimeError("data channel is not open")
        channel.send(im.message_to_bytes(message))

    async def send_input(self, message: im.InputMessage, timeout: float = 30.0) -> None:
        """Send one input message, waiting for the data channel to open first."""
        await self.wait_data_channel(timeout)
        self.send_input_nowait(message)

    async def send_mouse_move(self, x: int, y: int, delta_x: int = 0, delta_y: int = 0) -> None:
        """``x``/``y`` are the frontend's quantised 0..65535 (see ``input_messages.quantize``)."""
        await self.send_input(im.MouseMove(x, y, delta_x, delta_y))

    async def send_mouse_down(self, button: int, x: int, y: int) -> None:
        await self.send_input(im.MouseDown(button, x, y))

    async def send_mouse_up(self, button: int, x: int, y: int) -> None:
        await self.send_input(im.MouseUp(button, x, y))

    async def send_key_down(self, key_code: int, is_repeat: bool = False) -> None:
        await self.send_input(im.KeyDown(key_code, is_repeat))

    async def send_key_up(self, key_code: int) -> None:
        await self.send_input(im.KeyUp(key_code))
