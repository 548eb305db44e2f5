"""aiohttp WebSocket adapter: frames in -> ``SignalingCore`` -> actions out.

This module and ``ws_inbound`` are the only places that touch sockets, clocks and logs
for signalling, and the only places that map failures to close codes. The hot path per
frame (``ws_inbound.Inbound``) is: rate check, one ``orjson.loads``, the core's dispatch,
one encode, one socket write, all synchronous and run inside the socket's read; the
socket's task only answers pings and sees the close.

Costs measured by ``loadtest/bench_signaling.py`` shaped this file: aiohttp's
per-socket ``heartbeat=`` re-arms a timer on every received chunk, so keepalive is one
node-wide sweep instead; frames are written straight to the transport while it keeps
up, without a coroutine chain; per-socket objects are few and free of reference
cycles, so a closed socket is freed by reference counting, not by the cyclic GC.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
import time
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web

from signaling import errors
from signaling import messages as m
from signaling import peer_links as links
from signaling.access import AccessGuard, MaskCheck, close_frame
from signaling.broker import Broker, BrokerUnavailable, NodeCounts
from signaling.config import Settings
from signaling.join_trace import PlayerTrace
from signaling.limits import TokenBucket
from signaling.metrics import node_registry
from signaling.peer_links import Address, DirectoryEntry, Holder, node_of
from signaling.protocol import Announce, Claim, Close, Problem, Relay, Role, Send, SignalingCore, Withdraw
from signaling.sessions import SessionGate
from signaling.ws_inbound import Inbound, TapResponse

log = structlog.get_logger("signaling")

_CLOSE_TIMEOUT_S = 2.0
_TEXT, _BINARY, _PING, _PONG, _ERROR = (
    WSMsgType.TEXT,
    WSMsgType.BINARY,
    WSMsgType.PING,
    WSMsgType.PONG,
    WSMsgType.ERROR,
)
_MEDIUM = struct.Struct("!BBH").pack
_LARGE = struct.Struct("!BBQ").pack


_SMALL = tuple(bytes((0x81, n)) for n in range(126))  # the usual frame's header, made once


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final text frame (servers never mask)."""
    if length < 126:
        return _SMALL[length]
    if length < 65536:
        return _MEDIUM(0x81, 126, length)
    return _LARGE(0x81, 127, length)


class Outbox:
    """Outgoing frames of one socket.

    While the peer keeps up, ``push`` writes the frame to the transport at once, from
    the sender's task. Once the kernel buffer backs up, frames queue here and a flusher
    drains them through aiohttp (which waits for the transport); past ``limit`` queued
    frames the peer is a slow consumer and its connection is closed, so it never holds
    up whoever is sending to it.
    """

    __slots__ = ("_ws", "_transport", "_low_water", "_limit", "_queue", "_flusher", "owner", "closed")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, limit: int) -> None:
        self._ws = ws
        self._transport = transport
        low, _high = transport.get_write_buffer_limits()
        self._low_water = max(low, 1)
        self._limit = limit
        self._queue: collections.deque[bytes] | None = None  # only while backed up
        self._flusher: asyncio.Task[None] | None = None
        self.owner: Connection | None = None  # told about overflow; unset at teardown
        self.closed = False

    def push(self, frame: bytes) -> None:
        if self.closed:
            return
        queue = self._queue
        if queue is None:
            transport = self._transport
            if transport.get_write_buffer_size() < self._low_water:
                if transport.is_closing() or self._ws.closed:
                    self.closed = True
                    return
                transport.write(text_frame_header(len(frame)) + frame)
                return
            queue = self._queue = collections.deque()
        if len(queue) >= self._limit:
            self.closed = True
            self._queue = None
            if self.owner is not None:
                self.owner.close(errors.SLOW_CONSUMER, "send queue overflow")
            return
        queue.append(frame)
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
            if not self._queue:
                self._queue = None  # caught up: back to direct writes


class Connection:
    """One open WebSocket: its mailbox, rate limiter, and the problems already logged."""

    __slots__ = (
        "conn",
        "role",
        "remote",
        "ws",
        "transport",
        "outbox",
        "bucket",
        "ping_at",
        "_logged",
        "_closing",
        "close_code",
    )

    def __init__(
        self,
        conn: Address,
        role: Role,
        remote: str | None,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        outbox: Outbox,
        bucket: TokenBucket,
    ) -> None:
        self.conn = conn
        self.role = role
        self.remote = remote
        self.ws = ws
        self.transport = transport
        self.outbox = outbox
        self.bucket = bucket  # its ``last`` is when the peer last sent anything
        self.ping_at = 0.0  # when the keepalive sweep last pinged it
        self._logged: set[str] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.close_code: int | None = None  # the code we closed with (the peer may echo another)

    def info(self, event: str, **fields: Any) -> None:
        log.info(event, conn=self.conn, role=self.role.value, remote=self.remote, **fields)

    def problem(self, kind: str, detail: str) -> None:
        """Log each kind of problem once per connection: floods must not flood the log."""
        if self._logged is None:
            self._logged = set()
        if kind not in self._logged:
            self._logged.add(kind)
            self.info("protocol_problem", kind=kind, detail=detail)

    def close(self, code: int, reason: str) -> None:
        """Close from any task; never waits on the peer longer than a short timeout."""
        if self._closing is not None:
            return
        self.outbox.closed = True
        self.close_code = code
        self._closing = asyncio.create_task(self._close(code, errors.clip_reason(reason)))

    async def closed(self) -> None:
        """Let a close started by ``close()`` finish before the handler returns."""
        if self._closing is not None:
            await self._closing

    async def _close(self, code: int, reason: str) -> None:
        self.info("closing", code=code, reason=reason)
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError):
            self.transport.abort()  # a peer that does not read cannot take our close frame


class SignalingNode:
    """Glue between the sockets of one process, the core and the broker."""

    def __init__(
        self, settings: Settings, core: SignalingCore, broker: Broker, gate: SessionGate | None = None
    ) -> None:
        self.settings = settings
        self.core = core
        self.broker = broker
        self.gate = gate
        self.connections: dict[Address, Connection] = {}
        self.accepting = True
        self.access = AccessGuard(settings)  # the server swaps in one with keys (signaling.app)
        self._keepalive: asyncio.Task[None] | None = None
        self.metrics, self.stats = node_registry(self)  # /metrics (signaling.metrics)

    async def handle(self, request: web.Request, role: Role) -> web.StreamResponse:
        s = self.settings
        loop_time = asyncio.get_running_loop().time
        upgrade_at = loop_time()
        if not self.accepting:
            raise web.HTTPServiceUnavailable(text="server is shutting down")
        access = self.access  # signaling.access: every refusal below answers before the upgrade
        access.check_origin(request, role)
        slot = access.admit_connection(request, role, loop_time())
        try:
            credential = None if role is Role.PLAYER else access.streamer_credential(request, role)
            gate = self.gate if role is Role.PLAYER else None
            try:
                admitted = await gate.admit(request) if gate is not None else None
            except web.HTTPUnauthorized as exc:
                raise access.refuse("session_token_refused", request, exc, port=role.value) from None
            ws = TapResponse(
                autoping=False,  # pings are answered below; pongs feed the keepalive sweep
                max_msg_size=s.max_message_bytes,
                compress=False,
                decode_text=False,  # orjson reads the bytes and checks UTF-8 itself: one pass, not two
                protocols=_first_offered_protocol(request),
            )
            await ws.prepare(request)
        except BaseException:
            access.release(slot)
            raise
        transport = request.transport
        assert transport is not None
        self._check_masks(request, transport, role)
        traced = None if admitted is None else PlayerTrace.start(admitted[0], time.time() - (loop_time() - upgrade_at))
        conn, greeting = self.core.connect(
            role,
            allowed_streamer=None if admitted is None else admitted[0].streamer_id,
            options_key=None if admitted is None else admitted[0].session_id,
            credential=credential,
        )
        if role is Role.PLAYER:
            bucket = TokenBucket(s.player_rate, s.player_burst, loop_time())
        else:
            bucket = TokenBucket(s.streamer_rate, s.streamer_burst, loop_time())
        outbox = Outbox(ws, transport, s.send_queue_frames)
        connection = Connection(conn, role, request.remote, ws, transport, outbox, bucket)
        outbox.owner = connection
        self.connections[conn] = connection
        self.broker.open(conn, outbox)
        connection.info("connected", session=None if admitted is None else admitted[0].session_id)
        if gate is not None:
            gate.report("connected", admitted)
        inbound = Inbound(self, connection, bucket.take, traced)
        self.stats.opened[role] += 1
        try:
            inbound.start(self.run(greeting))  # a cluster streamer's first id: frames wait for it
            self.stats.handshake[role].observe(loop_time() - upgrade_at)
            if traced is not None:
                traced.greeted()
            if ws.tap is not None:
                inbound.wake = ws.tap.wake
                ws.tap.attach(inbound.on_data)  # data frames from now on: see ws_inbound
            async for msg in ws:  # control frames; data frames too where there is no tap
                kind = msg.type
                if kind is _TEXT or kind is _BINARY:
                    inbound.on_data(msg.data, kind)
                elif kind is _PING:
                    if inbound.stopped:
                        continue
                    if not bucket.take(loop_time()):
                        self.stats.rate_limited[role] += 1
                        inbound.stop(errors.RATE_LIMITED, "message rate limit exceeded")
                    else:
                        await ws.pong(msg.data)
                elif kind is _PONG:
                    bucket.last = loop_time()
                elif kind is _ERROR:
                    connection.info("socket_error", error=str(ws.exception()))
                if inbound.stopped:
                    break
        finally:
            if inbound.claimer is not None and not inbound.claimer.done():
                with contextlib.suppress(Exception):
                    await inbound.claimer  # as before: a claim in flight finishes before the socket's end
            inbound.stopped = True  # frames still arriving while the close completes are not read
            access.release(slot)
            self.broker.close(conn)
            del self.connections[conn]
            self.run(self.core.disconnect(conn))
            await connection.closed()
            outbox.closed = True
            outbox.owner = None  # no cycle left: the socket's objects go by refcount
            if gate is not None:
                gate.report("disconnected", admitted)
            self.stats.close(role, connection.close_code or ws.close_code)
            connection.info("disconnected", code=None if ws.close_code is None else int(ws.close_code))
            if traced is not None:  # after the socket's last line, which still names the trace
                traced.close(ws.close_code)
        return ws

    def _check_masks(self, request: web.Request, transport: asyncio.Transport, role: Role) -> None:
        """RFC 6455 5.1: a client frame without a mask is closed with 1002 (aiohttp takes it)."""
        protocol = request.protocol
        parser = getattr(protocol, "_payload_parser", None)
        if parser is None:
            return

        def unmasked() -> None:
            self.access.refuse(
                "unmasked_frame", request, web.HTTPBadRequest(), port=role.value
            )  # audited and counted; nothing is raised here
            transport.write(close_frame(errors.PROTOCOL_ERROR, "client frames must be masked"))
            transport.close()

        protocol._payload_parser = MaskCheck(parser, unmasked)  # noqa: SLF001 - aiohttp has no hook for it

    def run(self, actions: list[Any]) -> list[Claim]:
        """Carry out the core's actions. Frames are encoded once per message. Returns the
        id claims to make (a cluster only), which the connection's own task awaits."""
        claims: list[Claim] = []
        for action in actions:
            kind = type(action)
            if kind is Send:
                message = action.message
                frame = orjson.dumps(message) if type(message) is dict else m.encode(message)
                if not self.broker.deliver(action.to, frame, action.origin) and action.origin is not None:
                    if node_of(action.to) != self.broker.node_id:
                        self.on_undeliverable(action.origin, action.to, "signalling is out of touch with the cluster")
            elif kind is Close:
                target = self.connections.get(action.conn)
                if target is not None:
                    target.close(action.code, action.reason)
            elif kind is Problem:
                source = self.connections.get(action.conn)
                if source is not None:
                    source.problem(action.kind, action.detail)
            elif kind is Relay:
                if not self.broker.relay(action.link):
                    self._relay_failed(action.link)
            elif kind is Claim:
                claims.append(action)
            elif kind is Announce:
                self.broker.announce(action.streamer_id, action.conn, action.streaming, action.holder)
            elif kind is Withdraw:
                self.broker.withdraw(action.streamer_id, action.conn)
        return claims

    async def claim(self, claims: list[Claim]) -> None:
        for c in claims:
            peer = self.core.peer(c.conn) if c.conn in self.connections else None
            try:
                committed: str | None = await self.broker.claim(
                    c.conn,
                    c.wanted,
                    peer.streamer_id if peer else None,
                    bool(peer and peer.streaming),
                    c.exact,
                    c.holder,
                )
            except BrokerUnavailable as exc:
                log.warning("streamer_id_claim_failed", conn=c.conn, wanted=c.wanted, error=str(exc))
                committed = None  # chosen from this node's view; listed again when Redis is back
            self.run(self.core.claimed(c.conn, committed))

    def _relay_failed(self, link: links.AnyLink) -> None:
        """A link for another node could not leave this one: a subscription is refused at
        once; other changes are settled when the nodes see each other again (or one dies)."""
        if type(link) is links.Subscribe:
            refused = links.SubscribeRefused(
                to=link.player,
                streamer=link.to,
                message=f"Streamer {link.streamer_id} cannot be reached now (signalling cluster unavailable).",
            )
            self.run(self.core.link(refused))

    # --- events from the broker (NodeEvents) --------------------------------------------

    def on_link(self, link: links.AnyLink) -> None:
        self.run(self.core.link(link))

    def accepts(self, to: Address, origin: Address) -> bool:
        return self.core.accepts(to, origin)

    def on_listing(self, streamer_id: str, conn: Address, streaming: bool | None, holder: Holder | None = None) -> None:
        if streaming is None:
            self.core.unlisted(streamer_id, conn)
        else:
            self.core.listed(streamer_id, conn, streaming, holder)

    def on_directory(self, listings: list[DirectoryEntry]) -> None:
        self.core.replace_directory(listings)

    def on_node_lost(self, node: str) -> None:
        self.run(self.core.node_lost(node))

    def on_cut_off(self) -> None:
        self.run(self.core.cut_off())

    def local_listings(self) -> list[DirectoryEntry]:
        return list(self.core.local_listings())

    def local_counts(self) -> NodeCounts:
        players, streamers, subscribers = 0, 0, {}
        for peer in self.core.peers():
            players += peer.player_id is not None
            if peer.streamer_id is not None:
                streamers += 1
                subscribers[peer.streamer_id] = len(peer.subscribers)
        return NodeCounts(players, streamers, subscribers)

    def on_undeliverable(self, origin: Address, to: Address, reason: str) -> None:
        """A routed message could not reach its peer: a player is told (never a silent
        drop); a streamer or SFU is never sent a type it may not know, so it is logged."""
        source = self.connections.get(origin)
        if source is None:
            return
        source.problem("undeliverable", reason)
        if source.role is Role.PLAYER:
            error = m.Error(code="peer_unreachable", message=f"message not delivered: {reason}")
            self.broker.deliver(origin, m.encode(error))

    # --- keepalive: one sweep for the node, not a timer per socket ---------------------

    def start_keepalive(self) -> None:
        if self.settings.keepalive_s > 0 and self._keepalive is None:
            self._keepalive = asyncio.create_task(self._sweep_forever(self.settings.keepalive_s))

    async def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            try:
                await self._keepalive
            except asyncio.CancelledError:
                pass
            self._keepalive = None

    async def _sweep_forever(self, period: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period / 2)
            await self.sweep(loop.time(), period)

    async def sweep(self, now: float, period: float) -> None:
        """Ping sockets silent for ``period``; close those still silent a ``period`` later."""
        for connection in list(self.connections.values()):
            last = connection.bucket.last
            if now - last < period:
                continue
            if connection.ping_at <= last:
                connection.ping_at = now
                try:
                    await connection.ws.ping()
                except ConnectionError:
                    pass
            elif now - connection.ping_at >= period:
                connection.close(errors.KEEPALIVE_TIMEOUT, "keepalive timeout")

    async def close_all(self, code: int, reason: str) -> None:
        for connection in list(self.connections.values()):
            connection.close(code, reason)


def _first_offered_protocol(request: web.Request) -> tuple[str, ...]:
    """Agree to the first subprotocol offered, as Epic's server does."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    first = offered.split(",", 1)[0].strip()
    return (first,) if first else ()
