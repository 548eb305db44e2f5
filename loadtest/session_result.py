"""What one load-test session reports, and the WebSocket helpers every client kind uses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class Result:
    """One session as the tester saw it. Times are Unix seconds (so workers line up);
    durations are milliseconds. ``error`` is empty on success, else a stable kind."""

    k: int
    kind: str  # protocol | webrtc | abuse
    t0: float
    end: float = 0.0
    ok: bool = False
    error: str = ""
    abuse: str = ""
    abuse_outcome: str = ""  # what the server did to an abusive client (e.g. "close 1008")
    abuse_expected: bool = False  # the outcome is the documented answer to that abuse
    session_id: str = ""
    request_ms: float | None = None  # platform: POST /sessions answered
    queued: bool = False
    queue_ms: float | None = None  # platform: waiting in the queue
    connect_ms: float | None = None  # WebSocket open (from its own start)
    join_ms: float | None = None  # session request to signalling handshake done
    ttff_ms: float | None = None  # webrtc: session request to first decoded frame
    fps: float | None = None
    input_rtt_ms: list[float] = field(default_factory=list)
    players: int = 0  # player sockets this session opened (reconnects and spectators included)
    held: int = 0  # player sockets it held through its hold (1 + spectators)
    hold_from: float = 0.0  # Unix time its hold began (every socket joined)
    hold_until: float = 0.0  # Unix time it began closing its sockets
    relayed: int = 0  # signalling messages that crossed the server to us
    reconnects: int = 0
    reconnects_ok: int = 0

    def fail(self, error: str) -> Result:
        if not self.error:
            self.error = error
        self.ok = False
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ms_since(t: float) -> float:
    return (time.time() - t) * 1000.0


def error_kind(exc: BaseException) -> str:
    """A short, stable name for what went wrong, for the errors-by-kind table."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"ws_refused_{exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_refused"
    if isinstance(exc, aiohttp.ClientError | ConnectionError):
        return "connection_error"
    if isinstance(exc, Closed):
        return f"closed_{exc.code}"
    if isinstance(exc, Refused):
        return exc.kind
    return type(exc).__name__


class Closed(Exception):
    """The server closed our socket while we still needed it."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed by server ({code})")
        self.code = code


class Refused(Exception):
    """The server answered, but not with what a session needs (kind: a stable name)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Socket:
    """A signalling WebSocket with a message inbox (JSON objects only)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, timeout: float) -> Socket:
        ws = await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2.0), max_msg_size=0, heartbeat=None)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    try:
                        msg = orjson.loads(frame.data)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(msg, dict):
                        if msg.get("type") == "ping":
                            await self.send({"type": "pong", "time": msg.get("time")})
                        self.inbox.put_nowait(msg)
        except Exception:  # noqa: BLE001 - any read failure is a closed socket to the session
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def send(self, msg: dict[str, Any]) -> None:
        await self.send_raw(orjson.dumps(msg).decode())

    async def send_raw(self, text: str) -> None:
        if not self.ws.closed:
            await self.ws.send_str(text)

    async def expect(self, kinds: set[str], timeout: float) -> dict[str, Any]:
        """The next message of one of ``kinds`` (others are skipped); Closed if the socket goes."""
        async with asyncio.timeout(timeout):
            while True:
                if self.inbox.empty() and self.closed.is_set():
                    raise Closed(self.close_code)
                getter = asyncio.ensure_future(self.inbox.get())
                closer = asyncio.ensure_future(self.closed.wait())
                try:
                    await asyncio.wait({getter, closer}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closer.cancel()
                    if not getter.done():
                        getter.cancel()
                if getter.done() and not getter.cancelled():
                    msg = getter.result()
                    if msg.get("type") in kinds:
                        return msg

    async def wait_closed(self, timeout: float) -> int | None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_code

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3.0)
        self._reader.cancel()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._reader
