"""Load-generator process for the signalling benchmark (one of several).

The orchestrator (`loadtest.bench_signaling`) starts this as a child process and
drives it with one JSON command per line on stdin; each answer is one JSON line on
stdout. The generator must cost less CPU per message than the server it loads, so
the default client is a minimal WebSocket over a raw asyncio Protocol (uvloop):
frames are parsed in place, client frames use the all-zero masking key (legal, and
the payload then needs no XOR), and message handlers are plain callbacks, with no
task or coroutine per connection. `--client aiohttp` swaps in aiohttp's
`ws_connect` so the two can be compared.

Roles (all in this process; a streamer and its players always share a generator so
one clock times a handshake):
- streamer: waits `identify`, sends `endpointId`, waits `endpointIdConfirm`; on
  `playerConnected` sends a 4 KB `offer` and 10 `iceCandidate` (all with `playerId`);
  during the relay phase echoes every `iceCandidate` it gets back, unchanged (it
  already carries the `playerId` the server stamped).
- player: on open sends `listStreamers`, then `subscribe`; answers the offer (the
  answer SDP's `o=` line carries the player's index, so the streamer can tie the
  server's `playerId` to it) and sends 10 `iceCandidate`; during the relay phase keeps
  K candidates in flight.

Commands: hello, streamers, handshake, relay, idle, close_idle, quit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import ctypes
import gc
import os
import resource
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

import orjson

ICE_COUNT = 10
OFFER_SIZE = 4096
ANSWER_SIZE = 3072
LIST = b'{"type":"listStreamers"}'
now = time.monotonic

Handler = Callable[[bytes], None]
_pack_short = struct.Struct(">BBI").pack
_pack_mid = struct.Struct(">BBHI").pack
_pack_long = struct.Struct(">BBQI").pack


class Owner(Protocol):
    """A role object: the transport binds itself to `conn` before any data arrives."""

    conn: RawWs | AioWs | None

    def on_message(self, payload: bytes) -> None: ...


# ----------------------------------------------------------------------------- wire
def _candidate(i: int, ufrag: str) -> dict[str, Any]:
    return {
        "candidate": f"candidate:{1984850722 + i} 1 udp 2122260223 127.0.0.1 {50000 + i} typ host "
        f"generation 0 ufrag {ufrag} network-id 1 network-cost 50",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
        "usernameFragment": ufrag,
    }


# The player's candidates (no playerId: the server stamps it).
PLAYER_ICE = [orjson.dumps({"type": "iceCandidate", "candidate": _candidate(i, "Z9hb")}) for i in range(ICE_COUNT)]
# The relay-phase message: an iceCandidate of realistic size (~210 bytes) whose foundation
# marks it, so both ends recognise it with a substring search instead of a JSON parse.
RELAY_MARK = b"candidate:4242424242 "
RELAY_MSG = orjson.dumps({"type": "iceCandidate", "candidate": _candidate(4242424242 - 1984850722, "Z9hb")})
assert RELAY_MARK in RELAY_MSG

_SDP_BODY = [
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS pixelstreaming",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 100 101 102 103 104 105",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:eMe0",
    "a=ice-pwd:9GZ2TNYTSr0qPpXhTAXw3Urd",
    "a=ice-options:trickle",
    (
        "a=fingerprint:sha-256 5B:0C:8E:34:E5:7B:22:AF:8A:DC:12:05:EA:23:5B:3F:"
        "C8:91:4A:0D:9E:7E:A1:55:2B:6E:7F:30:F4:6E:36:2C"
    ),
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:toffset",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 urn:3gpp:video-orientation",
    "a=sendonly",
    "a=msid:pixelstreaming video_label",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:96 H264/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 transport-cc",
    "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:96 nack pli",
    "a=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=ssrc-group:FID 3735928559 3735928560",
    "a=ssrc:3735928559 cname:pixelstreaming",
    "a=ssrc:3735928559 msid:pixelstreaming video_label",
]


def make_sdp(ident: int, size: int) -> str:
    """A plausible SDP of about `size` bytes whose `o=` session id is `ident`."""
    lines = ["v=0", f"o=- {ident} 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1 2"]
    total = sum(len(x) + 2 for x in lines)
    i = 0
    while total < size:
        line = _SDP_BODY[i % len(_SDP_BODY)]
        lines.append(line)
        total += len(line) + 2
        i += 1
    return "\r\n".join(lines) + "\r\n"


def sdp_ident(sdp: str) -> int:
    return int(sdp.split("\r\n", 2)[1].split()[1])


# ----------------------------------------------------------------------------- transports
class RawWs(asyncio.Protocol):
    """A client WebSocket in one Protocol: just enough RFC 6455 for this benchmark.

    Text/binary frames go to `handler(payload)`; ping is answered with pong, close
    with close. Fragmented messages are not expected (aiohttp never fragments) and
    count as errors."""

    __slots__ = ("_buf", "_req", "_up", "closed", "handler", "opened", "transport")

    def __init__(self, request: bytes, owner: Owner, opened: asyncio.Future[None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.handler: Handler = owner.on_message
        owner.conn = self
        self.opened = opened
        self.closed = False
        self._buf = b""
        self._up = False
        self._req = request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.transport = t
        sock = t.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t.write(self._req)

    def connection_lost(self, exc: Exception | None) -> None:
        ours, self.closed = self.closed, True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before upgrade: {exc}"))
        elif STATS is not None and not ours:
            STATS.closed_by_server += 1

    def data_received(self, data: bytes) -> None:
        if self._up and not self._buf and len(data) >= 4 and data[0] == 0x81:
            # Fast path: exactly one whole unfragmented text frame (the relay's case).
            ln = data[1]
            if ln < 126:
                if len(data) == ln + 2:
                    self.handler(data[2:])
                    return
            elif ln == 126 and len(data) == 4 + ((data[2] << 8) | data[3]):
                self.handler(data[4:])
                return
        if not self._up:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self._buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(self._buf[:end].split(b"\r\n", 1)[0].decode()))
                assert self.transport is not None
                self.transport.close()
                return
            data = self._buf[end + 4 :]
            self._buf = b""
            self._up = True
            self.opened.set_result(None)
            if not data:
                return
        buf = self._buf + data if self._buf else data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            ln = buf[pos + 1] & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
            end = pos + hl + ln
            if end > n:
                break
            b0 = buf[pos]
            payload = buf[pos + hl : end]
            pos = end
            op = b0 & 0x0F
            if op == 1 or op == 2:
                if b0 & 0x80:
                    self.handler(payload)
                elif STATS is not None:
                    STATS.errors += 1
            elif op == 9:
                self._frame(0x8A, payload)
            elif op == 8:
                if not self.closed:
                    self._frame(0x88, payload[:2])
                    assert self.transport is not None
                    self.transport.close()
                return
        self._buf = buf[pos:]

    def _frame(self, b0: int, payload: bytes) -> None:
        # Masked (client frames must be), with the all-zero key: no XOR needed.
        n = len(payload)
        if n < 126:
            hdr = _pack_short(b0, 0x80 | n, 0)
        elif n < 65536:
            hdr = _pack_mid(b0, 0xFE, n, 0)
        else:
            hdr = _pack_long(b0, 0xFF, n, 0)
        assert self.transport is not None
        self.transport.write(hdr + payload)

    def send(self, payload: bytes) -> None:
        if not self.closed:
            self._frame(0x81, payload)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


async def open_raw(host: str, port: int, owner: Owner, timeout: float) -> RawWs:
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    req = (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    opened: asyncio.Future[None] = loop.create_future()
    async with asyncio.timeout(timeout):
        _, proto = await loop.create_connection(lambda: RawWs(req, owner, opened), host, port)
        try:
            await opened
        except BaseException:
            proto.close()
            raise
    return proto


class AioWs:
    """The same interface over aiohttp's client, to measure what the lean one saves."""

    def __init__(self, ws: Any, owner: Owner) -> None:
        self.ws = ws
        self.handler: Handler = owner.on_message
        owner.conn = self
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        from aiohttp import WSMsgType

        async for msg in self.ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.handler(msg.data)
        if not self.closed and STATS is not None:
            STATS.closed_by_server += 1
        self.closed = True

    def send(self, payload: bytes) -> None:
        # aiohttp's send_frame writes synchronously unless it must wait for drain:
        # step the coroutine by hand and only make a task in that rare case.
        coro = self.ws.send_frame(payload, 1)
        try:
            fut = coro.send(None)
        except StopIteration:
            return
        task = asyncio.get_running_loop().create_task(_finish(coro, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            task = asyncio.get_running_loop().create_task(self.ws.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _finish(coro: Coroutine[Any, Any, None], fut: Any) -> None:
    while True:
        try:
            await fut
        except BaseException as exc:  # noqa: BLE001 - hand the failure to the coroutine, as a Task would
            try:
                fut = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            fut = coro.send(None)
        except StopIteration:
            return


_session: Any = None


async def open_aiohttp(host: str, port: int, owner: Owner, timeout: float) -> AioWs:
    global _session
    import aiohttp

    if _session is None:
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    ws = await _session.ws_connect(
        f"http://{host}:{port}/",
        compress=0,
        autoping=True,
        max_msg_size=0,
        decode_text=False,
        timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
    )
    return AioWs(ws, owner)


# ----------------------------------------------------------------------------- roles
class Stats:
    """Counters one generator reports; the relay window is shared by all roles."""

    def __init__(self) -> None:
        self.errors = 0
        self.closed_by_server = 0
        self.win_start = float("inf")
        self.win_end = float("-inf")
        self.stop_at = float("-inf")  # players send no new relay message after this
        self.hop_to_streamer = 0
        self.hop_to_player = 0
        self.sent = 0
        self.rtt: list[float] = []


STATS: Stats | None = None


class Streamer:
    def __init__(self, index: int) -> None:
        self.name = f"BenchStreamer{index}"
        self.committed = ""
        self.conn: RawWs | AioWs | None = None
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.ice_in: dict[str, int] = {}
        self.pid_player: dict[str, Player] = {}
        self.players: dict[int, Player] = {}  # by player index, filled by the generator
        self.offer_sdp = make_sdp(index, OFFER_SIZE)

    def on_message(self, payload: bytes) -> None:
        st = STATS
        assert st is not None and self.conn is not None
        if RELAY_MARK in payload:  # relay phase: echo it back to that player, unchanged
            self.conn.send(payload)
            if st.win_start <= now() < st.win_end:
                st.hop_to_streamer += 1
            return
        m = orjson.loads(payload)
        t = m.get("type")
        if t == "iceCandidate":
            pid = m.get("playerId")
            c = self.ice_in.get(pid, 0)
            self.ice_in[pid] = c + 1
            if c + 1 == ICE_COUNT:
                p = self.pid_player.get(pid)
                if p is None:
                    st.errors += 1
                else:
                    p.streamer_done = now()
                    p.check_done()
        elif t == "playerConnected":
            pid = m["playerId"]
            self.conn.send(orjson.dumps({"type": "offer", "sdp": self.offer_sdp, "playerId": pid}))
            for i in range(ICE_COUNT):
                cand = _candidate(i, "eMe0")
                self.conn.send(orjson.dumps({"type": "iceCandidate", "candidate": cand, "playerId": pid}))
        elif t == "answer":
            p = self.players.get(sdp_ident(m["sdp"]))
            if p is None:
                st.errors += 1
            else:
                self.pid_player[m.get("playerId")] = p
        elif t == "identify":
            self.conn.send(orjson.dumps({"type": "endpointId", "id": self.name}))
        elif t == "endpointIdConfirm":
            self.committed = m.get("committedId", self.name)
            if not self.ready.done():
                self.ready.set_result(self.committed)
        elif t == "ping":
            self.conn.send(orjson.dumps({"type": "pong", "time": m.get("time", 0)}))


class Player:
    def __init__(self, index: int, streamer: Streamer) -> None:
        self.index = index
        self.streamer = streamer
        self.conn: RawWs | AioWs | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.t_connect = self.t_sub = self.player_done = self.streamer_done = 0.0
        self.ice = 0
        self.lists = 0
        self.failure = ""
        self.inflight: collections.deque[float] = collections.deque()
        self.answer = orjson.dumps(
            {"type": "answer", "sdp": make_sdp(index, ANSWER_SIZE), "minBitrateBps": 0, "maxBitrateBps": 0}
        )

    def check_done(self) -> None:
        if self.player_done and self.streamer_done and not self.done.done():
            self.done.set_result(None)

    def fail(self, why: str) -> None:
        self.failure = why
        if not self.done.done():
            self.done.set_exception(RuntimeError(why))

    def on_message(self, payload: bytes) -> None:
        st = STATS
        assert st is not None and self.conn is not None
        if RELAY_MARK in payload:  # relay phase: our message came home; send the next
            t_now = now()
            sent = self.inflight.popleft() if self.inflight else t_now
            if st.win_start <= t_now < st.win_end:
                st.hop_to_player += 1
                st.rtt.append(t_now - sent)
            if t_now < st.stop_at:
                self.inflight.append(t_now)
                self.conn.send(RELAY_MSG)
                st.sent += 1
            return
        m = orjson.loads(payload)
        t = m.get("type")
        if t == "iceCandidate":
            self.ice += 1
            if self.ice == ICE_COUNT:
                self.player_done = now()
                self.check_done()
        elif t == "offer":
            self.conn.send(self.answer)
            for ice in PLAYER_ICE:
                self.conn.send(ice)
        elif t == "streamerList":
            if self.streamer.committed in m.get("ids", ()):
                self.t_sub = now()
                self.conn.send(orjson.dumps({"type": "subscribe", "streamerId": self.streamer.committed}))
            elif self.lists < 20:
                self.lists += 1
                asyncio.get_running_loop().call_later(0.05, self.conn.send, LIST)
            else:
                self.fail("streamer never listed")
        elif t == "subscribeFailed":
            self.fail(f"subscribeFailed: {m.get('message')}")
        elif t == "ping":
            self.conn.send(orjson.dumps({"type": "pong", "time": m.get("time", 0)}))


class Idle:
    """An idle player: it only answers the server's JSON keepalive, so it stays connected."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: RawWs | AioWs | None = None

    def on_message(self, payload: bytes) -> None:
        if b'"ping"' in payload and self.conn is not None:
            m = orjson.loads(payload)
            if m.get("type") == "ping":
                self.conn.send(orjson.dumps({"type": "pong", "time": m.get("time", 0)}))


# ----------------------------------------------------------------------------- generator
def _quiet_gc() -> None:
    """Collect now and move what survives out of the GC's sight, so no full collection of
    this process stalls a measured phase and shows up as server latency."""
    gc.collect()
    gc.freeze()


class Generator:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.host: str = cfg["host"]
        self.timeout: float = cfg.get("timeout", 30.0)
        self.opener = open_aiohttp if cfg.get("client") == "aiohttp" else open_raw
        self.streamers = {s: Streamer(s) for s in cfg["streamers"]}
        self.players = [Player(i, self.streamers[s]) for i, s in cfg["players"]]
        for p in self.players:
            p.streamer.players[p.index] = p
        self.idle: list[RawWs | AioWs] = []
        self._started = 0  # players handed to cmd_handshake so far

    async def connect(self, port: int, owner: Owner) -> RawWs | AioWs:
        return await self.opener(self.host, port, owner, self.timeout)

    async def cmd_hello(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "streamers": len(self.streamers), "players": len(self.players)}

    async def cmd_streamers(self, port: int) -> dict[str, Any]:
        async def one(s: Streamer) -> str:
            await self.connect(port, s)
            return await asyncio.wait_for(s.ready, self.timeout)

        ids = await asyncio.gather(*(one(s) for s in self.streamers.values()))
        return {"ids": ids}

    async def cmd_handshake(
        self, port: int, start_at: float, inflight: int, count: int | None = None, close_after: bool = False
    ) -> dict[str, Any]:
        """Handshake the next ``count`` players not yet started (all the rest by default), so
        one generator can run a light phase first and the loaded one after it; ``close_after``
        closes them once measured (a light phase's players then take no part in the relay)."""
        sem = asyncio.Semaphore(max(1, inflight))
        players = self.players[self._started :]
        if count is not None:
            players = players[: max(0, count)]
        self._started += len(players)

        async def one(p: Player) -> None:
            async with sem:
                p.t_connect = now()
                try:
                    conn = await self.connect(port, p)
                    conn.send(LIST)  # the frontend sends it on open, before config
                    await asyncio.wait_for(asyncio.shield(p.done), self.timeout)
                except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                    p.failure = p.failure or f"{type(exc).__name__}: {exc}"

        _quiet_gc()
        await asyncio.sleep(max(0.0, start_at - now()))
        await asyncio.gather(*(one(p) for p in players))
        if close_after:
            for p in players:
                if p.conn is not None:
                    p.conn.close()
        ok = [p for p in players if not p.failure]
        failures = collections.Counter(p.failure for p in players if p.failure)
        return {
            "start": start_at,
            "end": max((max(p.player_done, p.streamer_done) for p in ok), default=start_at),
            "latency": [max(p.player_done, p.streamer_done) - p.t_sub for p in ok],
            "join": [max(p.player_done, p.streamer_done) - p.t_connect for p in ok],
            "failures": dict(failures.most_common(5)),
            "failed": len(players) - len(ok),
        }

    async def cmd_relay(self, start_at: float, seconds: float, k: int, warmup: float, grace: float) -> dict[str, Any]:
        st = STATS
        assert st is not None
        pairs = [p for p in self.players if not p.failure and p.conn is not None and not p.conn.closed]
        st.hop_to_streamer = st.hop_to_player = st.sent = 0
        st.rtt = []
        st.win_start, st.win_end = start_at, start_at + seconds
        st.stop_at = st.win_end
        _quiet_gc()
        await asyncio.sleep(max(0.0, start_at - warmup - now()))
        t0 = now()
        for p in pairs:
            assert p.conn is not None
            p.inflight.clear()
            for _ in range(k):
                p.inflight.append(t0)
                p.conn.send(RELAY_MSG)
            st.sent += k
        await asyncio.sleep(max(0.0, st.win_end - now()))
        deadline = now() + grace  # let what is in flight come home (bounded), to count losses
        while now() < deadline and any(p.inflight for p in pairs):  # noqa: ASYNC110 - bounded drain
            await asyncio.sleep(0.05)
        lost = sum(len(p.inflight) for p in pairs)
        stride = max(1, len(st.rtt) // 5000)
        return {
            "pairs": len(pairs),
            "hop_to_streamer": st.hop_to_streamer,
            "hop_to_player": st.hop_to_player,
            "sent": st.sent,
            "lost": lost,
            "rtt": st.rtt[::stride],
            "rtt_weight": stride,
            "rtt_n": len(st.rtt),
        }

    async def cmd_idle(self, port: int, count: int, concurrency: int) -> dict[str, Any]:
        sem = asyncio.Semaphore(max(1, concurrency))
        failures: collections.Counter[str] = collections.Counter()

        async def one() -> None:
            async with sem:
                try:
                    conn = await self.connect(port, Idle())
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    failures[f"{type(exc).__name__}: {exc}"] += 1
                    return
                self.idle.append(conn)

        await asyncio.gather(*(one() for _ in range(count)))
        return {
            "open": sum(1 for c in self.idle if not c.closed),
            "failed": sum(failures.values()),
            "failures": dict(failures.most_common(3)),
        }

    async def cmd_close_idle(self) -> dict[str, Any]:
        for c in self.idle:
            c.close()
        n = len(self.idle)
        self.idle.clear()
        return {"closed": n}

    async def cmd_stats(self) -> dict[str, Any]:
        assert STATS is not None
        return {"errors": STATS.errors, "closed_by_server": STATS.closed_by_server}

    async def cmd_quit(self) -> dict[str, Any]:
        assert STATS is not None
        for c in [*self.idle, *(p.conn for p in self.players), *(s.conn for s in self.streamers.values())]:
            if c is not None:
                c.close()
        if _session is not None:
            await _session.close()
        return {"errors": STATS.errors}

    async def serve(self) -> None:
        """Answer commands from stdin until `quit` or EOF."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                await self.cmd_quit()
                return
            req = orjson.loads(line)
            name = req.pop("cmd")
            try:
                out = {"ok": True, **await getattr(self, f"cmd_{name}")(**req)}
            except Exception as exc:  # noqa: BLE001 - the orchestrator reports it
                out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.buffer.write(orjson.dumps(out) + b"\n")
            sys.stdout.buffer.flush()
            if name == "quit":
                return


def _die_with_parent() -> None:
    """So a killed orchestrator leaves no generator behind (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="signalling benchmark load generator (driven by bench_signaling)")
    ap.add_argument("--config", required=True, help="JSON: host, streamers, players, client, timeout")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="hard lifetime bound")
    args = ap.parse_args(argv)
    _die_with_parent()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run() -> None:
        global STATS
        STATS = Stats()
        asyncio.get_running_loop().call_later(args.max_seconds, os._exit, 3)
        await Generator(orjson.loads(args.config)).serve()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
