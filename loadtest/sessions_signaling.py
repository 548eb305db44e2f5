"""Sessions against a signalling server alone: the tester makes the streamers.

A protocol-only session is one streamer the tester registers, one player and its
spectators, each doing the whole Pixel Streaming handshake the way Epic's frontend
does (``listStreamers``, ``subscribe``, offer, answer, trickled ICE both ways), holding
for the session's length, maybe dropping and re-joining once, then leaving. No media
flows: these clients cost little, so one process runs thousands.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from loadtest.bench_client import ANSWER_SIZE, OFFER_SIZE, make_sdp
from loadtest.scenario import Plan
from loadtest.session_result import Closed, Refused, Result, Socket, error_kind, ms_since


@dataclass(frozen=True)
class SignalingTarget:
    player_url: str  # ws://host:player_port/
    streamer_url: str  # ws://host:streamer_port/
    run_id: str


def candidate(i: int, ufrag: str) -> dict[str, Any]:
    return {
        "candidate": f"candidate:{1984850722 + i} 1 udp 2122260223 127.0.0.1 {50000 + i} typ host "
        f"generation 0 ufrag {ufrag}",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }


class FakeStreamer:
    """A tester-made streamer: answers every ``playerConnected`` with an offer and ICE."""

    def __init__(self, sock: Socket, ice: int, ident: int) -> None:
        self.sock, self.ice = sock, ice
        self.offer = make_sdp(ident, OFFER_SIZE)
        self.got: dict[str, int] = {}  # playerId -> answer + candidates received
        self.changed = asyncio.Event()
        self.relayed = 0
        self._task = asyncio.get_running_loop().create_task(self._serve())

    @classmethod
    async def start(
        cls, http: aiohttp.ClientSession, url: str, name: str, ice: int, ident: int, timeout: float
    ) -> tuple[FakeStreamer, str]:
        sock = await Socket.open(http, url, timeout)
        try:
            await sock.expect({"identify"}, timeout)
            await sock.send({"type": "endpointId", "id": name})
            confirm = await sock.expect({"endpointIdConfirm"}, timeout)
        except BaseException:
            await sock.close()
            raise
        return cls(sock, ice, ident), str(confirm.get("committedId", name))

    async def _serve(self) -> None:
        with contextlib.suppress(Closed):
            while True:
                m = await self.sock.expect({"playerConnected", "answer", "iceCandidate"}, 1e9)
                pid = str(m.get("playerId"))
                if m["type"] == "playerConnected":
                    await self.sock.send({"type": "offer", "sdp": self.offer, "playerId": pid})
                    for i in range(self.ice):
                        await self.sock.send(
                            {"type": "iceCandidate", "candidate": candidate(i, "lt0s"), "playerId": pid}
                        )
                else:
                    self.relayed += 1
                    self.got[pid] = self.got.get(pid, 0) + 1
                    self.changed.set()

    async def wait_player(self, pid: str, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.got.get(pid, 0) < count:
                if self.sock.closed.is_set():
                    raise Closed(self.sock.close_code)
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self.sock.close()


async def join(
    http: aiohttp.ClientSession,
    target: SignalingTarget,
    streamer: FakeStreamer,
    sid: str,
    ice: int,
    k: int,
    timeout: float,
    r: Result,
) -> Socket:
    """One player's whole handshake; returns its open socket. Counts into ``r``."""
    t = time.time()
    sock = await Socket.open(http, target.player_url, timeout)
    r.players += 1
    if r.connect_ms is None:
        r.connect_ms = ms_since(t)
    try:
        await sock.send({"type": "listStreamers"})
        listing = await sock.expect({"streamerList"}, timeout)
        if sid not in listing.get("ids", ()):
            raise Refused("streamer_not_listed", sid)
        await sock.send({"type": "subscribe", "streamerId": sid})
        offer = await sock.expect({"offer", "subscribeFailed"}, timeout)
        if offer["type"] == "subscribeFailed":
            raise Refused("subscribe_failed", str(offer.get("message")))
        pid = str(offer.get("playerId"))
        r.relayed += 1
        await sock.send({"type": "answer", "sdp": make_sdp(k, ANSWER_SIZE), "minBitrateBps": 0, "maxBitrateBps": 0})
        for i in range(ice):
            await sock.send({"type": "iceCandidate", "candidate": candidate(i, "lt0p")})
        for _ in range(ice):
            await sock.expect({"iceCandidate"}, timeout)
            r.relayed += 1
        await streamer.wait_player(pid, 1 + ice, timeout)
    except BaseException:
        await sock.close()
        raise
    return sock


async def run_protocol(
    http: aiohttp.ClientSession, target: SignalingTarget, plan: Plan, ice: int, timeout: float
) -> Result:
    r = Result(k=plan.k, kind="protocol", t0=time.time())
    streamer: FakeStreamer | None = None
    socks: list[Socket] = []
    try:
        streamer, sid = await FakeStreamer.start(
            http, target.streamer_url, f"lt-{target.run_id}-{plan.k}", ice, plan.k, timeout
        )
        socks.append(await join(http, target, streamer, sid, ice, plan.k, timeout, r))
        r.join_ms = ms_since(r.t0)
        spectators = await asyncio.gather(
            *(join(http, target, streamer, sid, ice, plan.k, timeout, r) for _ in range(plan.spectators)),
            return_exceptions=True,
        )
        for s in spectators:
            if isinstance(s, BaseException):
                raise s
            socks.append(s)
        r.held, r.hold_from = len(socks), time.time()
        if plan.reconnect:
            await asyncio.sleep(plan.length_s / 2)
            r.reconnects += 1
            await socks.pop(0).close()
            socks.insert(0, await join(http, target, streamer, sid, ice, plan.k, timeout, r))
            r.reconnects_ok += 1
            await asyncio.sleep(plan.length_s / 2)
        else:
            await asyncio.sleep(plan.length_s)
        for s in socks:
            if s.closed.is_set():
                raise Closed(s.close_code)
        r.ok = True
    except Exception as exc:  # noqa: BLE001 - every failure is a counted error kind
        r.fail(error_kind(exc))
    finally:
        r.hold_until = time.time()
        for s in socks:
            await s.close()
        if streamer is not None:
            r.relayed += streamer.relayed
            await streamer.close()
        r.end = time.time()
    return r


# ----------------------------------------------------------------------------- abuse
# What the server must do to each kind of abuse (docs/protocol.md, "Errors and close codes").
EXPECTED = {"malformed": "close 1008", "oversized": "close 1009", "flooding": "close 4429"}


async def abuse_socket(sock: Socket, kind: str, timeout: float) -> str:
    """Misbehave on an open player socket; returns what the server did (``close N``)."""
    if kind == "malformed":
        for _ in range(40):  # past the protocol-error limit (20)
            await sock.send_raw("{not json")
    elif kind == "oversized":
        await sock.send_raw('{"type":"iceCandidate","pad":"' + "x" * 70_000 + '"}')  # over 64 KiB
    else:
        for i in range(2_000):  # far past the player burst (200)
            if sock.closed.is_set():
                break
            try:
                await sock.send({"type": "ping", "time": i})
            except (aiohttp.ClientError, ConnectionError):
                break  # the server closed it mid-flood: its close frame says how, below
    try:
        code = await sock.wait_closed(timeout)
    except TimeoutError:
        return "still open"
    return f"close {code}"


async def run_abuse(http: aiohttp.ClientSession, url: str, plan: Plan, timeout: float) -> Result:
    """An abusive player. ``ok`` means the server answered the abuse as documented."""
    r = Result(k=plan.k, kind="abuse", t0=time.time(), abuse=plan.abuse)
    try:
        sock = await Socket.open(http, url, timeout)
        r.players += 1
        r.connect_ms = ms_since(r.t0)
        try:
            r.abuse_outcome = await abuse_socket(sock, plan.abuse, timeout)
        finally:
            await sock.close()
        r.abuse_expected = r.abuse_outcome == EXPECTED[plan.abuse]
        r.ok = r.abuse_expected
        if not r.ok:
            r.error = f"abuse_{plan.abuse}_unanswered"
    except Exception as exc:  # noqa: BLE001
        r.fail(error_kind(exc))
    r.end = time.time()
    return r


# ----------------------------------------------------------------------------- webrtc
async def run_webrtc(target: SignalingTarget, plan: Plan, probes: int, timeout: float) -> Result:
    """A real aiortc streamer (the synthetic one, made by the tester) and a real player;
    the clock starts when the player starts connecting."""
    from loadtest.synthetic_player import SyntheticPlayer
    from loadtest.webrtc_probe import measure
    from streamer.synthetic import SyntheticStreamer

    r = Result(k=plan.k, kind="webrtc", t0=time.time())
    streamer = SyntheticStreamer(target.streamer_url, f"lt-{target.run_id}-{plan.k}", 640, 360, 30)
    task = asyncio.get_running_loop().create_task(streamer.run())
    try:
        sid = await streamer.wait_identified(timeout)
        r.t0 = time.time()
        async with SyntheticPlayer(target.player_url, sid) as player:
            r.players += 1
            r.connect_ms = ms_since(r.t0)
            await measure(player, r, plan.length_s, probes, timeout)
        r.ok = True
    except Exception as exc:  # noqa: BLE001
        r.fail(error_kind(exc))
    finally:
        await streamer.stop()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await task
        r.end = time.time()
    return r
