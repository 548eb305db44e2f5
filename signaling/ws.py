"""aiohttp WebSocket adapter: frames in -> ``SignalingCore`` -> actions out.

This is the only place that touches sockets, clocks and logs for signalling, and the
only place that maps failures to close codes. The hot path per frame is: rate check,
one ``orjson.loads``, the core's dispatch, one encode, one socket write.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web

from signaling import errors
from signaling import messages as m
from signaling.broker import Broker
from signaling.config import Settings
from signaling.limits import TokenBucket
from signaling.protocol import Close, ConnId, Problem, Role, Send, SignalingCore
from signaling.sessions import SessionGate

log = structlog.get_logger("signaling")

_CLOSE_TIMEOUT_S = 2.0


class Outbox:
    """Outgoing frames of one socket.

    While the peer keeps up, a frame is written straight to the socket from the
    sender's task (no queue, no task switch). Once the kernel buffer backs up,
    frames queue here and a flusher drains them; past ``limit`` queued frames the
    peer is a slow consumer and ``on_overflow`` closes it, so it never holds up
    whoever is sending to it.
    """

    __slots__ = ("_ws", "_transport", "_low_water", "_limit", "_queue", "_flusher",
                 "_on_overflow", "closed")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport,
                 limit: int, on_overflow: Callable[[], None]) -> None:
        self._ws = ws
        self._transport = transport
        low, _high = transport.get_write_buffer_limits()
        self._low_water = max(low, 1)
        self._limit = limit
        self._queue: collections.deque[bytes] = collections.deque()
        self._flusher: asyncio.Task[None] | None = None
        self._on_overflow = on_overflow
        self.closed = False

    async def push(self, frame: bytes) -> None:
        if self.closed:
            return
        if not self._queue and self._transport.get_write_buffer_size() < self._low_water:
            try:  # the transport is not paused, so this write does not suspend
                await self._ws.send_frame(frame, WSMsgType.TEXT)
            except ConnectionError:
                self.closed = True
            return
        if len(self._queue) >= self._limit:
            self.closed = True
            self._queue.clear()
            self._on_overflow()
            return
        self._queue.append(frame)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._queue and not self.closed:
                await self._ws.send_frame(self._queue.popleft(), WSMsgType.TEXT)
        except ConnectionError:
            self.closed = True
        finally:
            self._flusher = None


class Connection:
    """One open WebSocket: its mailbox, logger, and the problems already logged."""

    __slots__ = ("conn", "role", "ws", "transport", "outbox", "log", "_logged", "_closing")

    def __init__(self, conn: ConnId, role: Role, ws: web.WebSocketResponse,
                 transport: asyncio.Transport, outbox: Outbox, logger: Any) -> None:
        self.conn = conn
        self.role = role
        self.ws = ws
        self.transport = transport
        self.outbox = outbox
        self.log = logger
        self._logged: set[str] = set()
        self._closing: asyncio.Task[None] | None = None

    def problem(self, kind: str, detail: str) -> None:
        """Log each kind of problem once per connection: floods must not flood the log."""
        if kind not in self._logged:
            self._logged.add(kind)
            self.log.info("protocol_problem", kind=kind, detail=detail)

    def close(self, code: int, reason: str) -> None:
        """Close from any task; never waits on the peer longer than a short timeout."""
        if self._closing is not None:
            return
        self.outbox.closed = True
        self._closing = asyncio.create_task(self._close(code, errors.clip_reason(reason)))

    async def closed(self) -> None:
        """Let a close started by ``close()`` finish before the handler returns."""
        if self._closing is not None:
            await self._closing

    async def _close(self, code: int, reason: str) -> None:
        self.log.info("closing", code=code, reason=reason)
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError):
            self.transport.abort()  # a peer that does not read cannot take our close frame


class SignalingNode:
    """Glue between the sockets of one process, the core and the broker."""

    def __init__(self, settings: Settings, core: SignalingCore, broker: Broker,
                 gate: SessionGate | None = None) -> None:
        self.settings = settings
        self.core = core
        self.broker = broker
        self.gate = gate
        self.connections: dict[ConnId, Connection] = {}
        self.accepting = True

    async def handle(self, request: web.Request, role: Role) -> web.StreamResponse:
        s = self.settings
        if not self.accepting:
            raise web.HTTPServiceUnavailable(text="server is shutting down")
        gate = self.gate if role is Role.PLAYER else None
        admitted = gate.admit(request) if gate is not None else None
        ws = web.WebSocketResponse(
            heartbeat=s.keepalive_s or None,
            max_msg_size=s.max_message_bytes,
            compress=False,
            protocols=_first_offered_protocol(request),
        )
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        conn, greeting = self.core.connect(
            role, allowed_streamer=None if admitted is None else admitted[0].streamer_id,
            options_key=None if admitted is None else admitted[0].session_id)
        connection: Connection
        outbox = Outbox(ws, transport, s.send_queue_frames,
                        lambda: connection.close(errors.SLOW_CONSUMER, "send queue overflow"))
        connection = Connection(conn, role, ws, transport, outbox,
                                log.bind(conn=conn, role=role.value, remote=request.remote))
        self.connections[conn] = connection
        self.broker.open(conn, outbox)
        connection.log.info("connected", session=None if admitted is None else admitted[0].session_id)
        if gate is not None:
            gate.report("connected", admitted)
        if role is Role.PLAYER:
            bucket = TokenBucket(s.player_rate, s.player_burst, _now())
        else:
            bucket = TokenBucket(s.streamer_rate, s.streamer_burst, _now())
        run = self.run
        receive = self.core.receive
        loads = orjson.loads
        try:
            await run(greeting)
            async for msg in ws:
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    if not bucket.take(_now()):
                        connection.close(errors.RATE_LIMITED, "message rate limit exceeded")
                        break
                    try:
                        obj = loads(msg.data)
                    except orjson.JSONDecodeError:
                        await run(self.core.reject(conn, "frame is not valid UTF-8 JSON"))
                        continue
                    await run(receive(conn, obj))
                elif msg.type is WSMsgType.ERROR:
                    connection.log.info("socket_error", error=str(ws.exception()))
        finally:
            self.broker.close(conn)
            del self.connections[conn]
            await run(self.core.disconnect(conn))
            await connection.closed()
            if gate is not None:
                gate.report("disconnected", admitted)
            connection.log.info("disconnected", code=None if ws.close_code is None else int(ws.close_code))
        return ws

    async def run(self, actions: list[Any]) -> None:
        """Carry out the core's actions. Frames are encoded once per message."""
        for action in actions:
            if type(action) is Send:
                message = action.message
                frame = orjson.dumps(message) if type(message) is dict else m.encode(message)
                await self.broker.deliver(action.to, frame)
            elif type(action) is Close:
                target = self.connections.get(action.conn)
                if target is not None:
                    target.close(action.code, action.reason)
            elif type(action) is Problem:
                source = self.connections.get(action.conn)
                if source is not None:
                    source.problem(action.kind, action.detail)

    async def close_all(self, code: int, reason: str) -> None:
        for connection in list(self.connections.values()):
            connection.close(code, reason)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _first_offered_protocol(request: web.Request) -> tuple[str, ...]:
    """Agree to the first subprotocol offered, as Epic's server does."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    first = offered.split(",", 1)[0].strip()
    return (first,) if first else ()
