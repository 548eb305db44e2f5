"""Sessions through the whole platform: the matchmaker's session API and queue, then
signalling, against the slots the GPU agents run (docs/matchmaker-api.md).

A player asks ``POST /api/v1/sessions`` for a slot, waits in the queue's event stream
if it got a ticket, opens ``signaling_url?token=...``, subscribes to its streamer and
waits for the streamer's offer. Protocol-only players stop there (no media) and hold
the slot for the session's length; a reconnect asks again with the same
``client_key`` and must get the same session back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp

from loadtest.scenario import Plan
from loadtest.session_result import Refused, Result, Socket, error_kind, ms_since
from loadtest.sessions_signaling import EXPECTED as SIGNALING_EXPECTED
from loadtest.sessions_signaling import abuse_socket
from matchmaker.client import ApiError, MatchmakerApi, Unreachable
from matchmaker.models import Assigned, Waiting


@dataclass(frozen=True)
class PlatformTarget:
    matchmaker_url: str  # http://host:port (the API is under /api/v1)
    app: str
    run_id: str
    queue_timeout_s: float


EXPECTED = {
    "malformed": "http 400 invalid_body",
    "oversized": "http 413 too_large",
    **{"flooding": SIGNALING_EXPECTED["flooding"]},
}


def _platform_error(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"http_{exc.status}_{exc.code}"
    if isinstance(exc, Unreachable):
        return "matchmaker_unreachable"
    return error_kind(exc)


async def get_slot(api: MatchmakerApi, target: PlatformTarget, key: str, r: Result) -> Assigned:
    """A slot for ``key``, through the queue if need be; fills request and queue times."""
    t = time.time()
    reply = await api.create_session(target.app, client_key=key)
    r.request_ms = ms_since(t)
    if isinstance(reply, Assigned):
        return reply
    assert isinstance(reply, Waiting)
    r.queued = True
    async with asyncio.timeout(target.queue_timeout_s):
        async for event in api.ticket_events(reply.ticket_id):
            if isinstance(event, Assigned):
                r.queue_ms = ms_since(t)
                return event
            if not isinstance(event, Waiting):
                raise Refused(f"ticket_{type(event).__name__.removeprefix('Ticket').lower()}", event.reason or "")
    raise Refused("ticket_stream_ended")


def player_url(slot: Assigned) -> str:
    sep = "&" if "?" in slot.signaling_url else "?"
    return f"{slot.signaling_url}{sep}token={slot.token}"


async def subscribe(http: aiohttp.ClientSession, slot: Assigned, timeout: float, r: Result) -> Socket:
    """Open signalling with the session token and subscribe; done at the streamer's offer."""
    t = time.time()
    sock = await Socket.open(http, player_url(slot), timeout)
    r.players += 1
    if r.connect_ms is None:
        r.connect_ms = ms_since(t)
    try:
        await sock.send({"type": "listStreamers"})
        await sock.expect({"streamerList"}, timeout)
        await sock.send({"type": "subscribe", "streamerId": slot.streamer_id})
        offer = await sock.expect({"offer", "subscribeFailed"}, timeout)
        if offer["type"] == "subscribeFailed":
            raise Refused("subscribe_failed", str(offer.get("message")))
        r.relayed += 1
    except BaseException:
        await sock.close()
        raise
    return sock


async def run_protocol(
    http: aiohttp.ClientSession, api: MatchmakerApi, target: PlatformTarget, plan: Plan, timeout: float
) -> Result:
    r = Result(k=plan.k, kind="protocol", t0=time.time())
    key = f"lt-{target.run_id}-{plan.k}"
    sock: Socket | None = None
    try:
        slot = await get_slot(api, target, key, r)
        r.session_id = slot.session_id
        sock = await subscribe(http, slot, timeout, r)
        r.join_ms = ms_since(r.t0)
        r.held, r.hold_from = 1, time.time()
        if plan.reconnect:
            await asyncio.sleep(plan.length_s / 2)
            r.reconnects += 1
            await sock.close()
            again = await api.create_session(target.app, client_key=key)
            if not isinstance(again, Assigned) or again.session_id != slot.session_id:
                raise Refused("reconnect_lost_session")
            sock = await subscribe(http, again, timeout, r)
            r.reconnects_ok += 1
            await asyncio.sleep(plan.length_s / 2)
        else:
            await asyncio.sleep(plan.length_s)
        if sock.closed.is_set():
            raise Refused(f"closed_{sock.close_code}")
        r.ok = True
    except Exception as exc:  # noqa: BLE001 - every failure is a counted error kind
        r.fail(_platform_error(exc))
    finally:
        r.hold_until = time.time()
        if sock is not None:
            await sock.close()
        r.end = time.time()
    return r


async def run_webrtc(api: MatchmakerApi, target: PlatformTarget, plan: Plan, probes: int, timeout: float) -> Result:
    """A real aiortc player through the whole join path; the clock starts at the request."""
    from loadtest.synthetic_player import SyntheticPlayer
    from loadtest.webrtc_probe import measure

    r = Result(k=plan.k, kind="webrtc", t0=time.time())
    try:
        slot = await get_slot(api, target, f"lt-{target.run_id}-{plan.k}", r)
        r.session_id = slot.session_id
        t = time.time()
        async with SyntheticPlayer(player_url(slot), slot.streamer_id) as player:
            r.players += 1
            r.connect_ms = ms_since(t)
            await measure(player, r, plan.length_s, probes, timeout)
        r.ok = True
    except Exception as exc:  # noqa: BLE001
        r.fail(_platform_error(exc))
    r.end = time.time()
    return r


async def run_abuse(
    http: aiohttp.ClientSession, api: MatchmakerApi, target: PlatformTarget, plan: Plan, timeout: float
) -> Result:
    """Malformed and oversized session requests; a player that floods signalling."""
    r = Result(k=plan.k, kind="abuse", t0=time.time(), abuse=plan.abuse)
    try:
        if plan.abuse == "flooding":
            slot = await get_slot(api, target, f"lt-{target.run_id}-{plan.k}", r)
            r.session_id = slot.session_id
            sock = await Socket.open(http, player_url(slot), timeout)
            r.players += 1
            try:
                r.abuse_outcome = await abuse_socket(sock, "flooding", timeout)
            finally:
                await sock.close()
        else:
            body = b"{not json" if plan.abuse == "malformed" else b'{"app": "' + b"x" * 70_000 + b'"}'
            url = target.matchmaker_url.rstrip("/") + "/api/v1/sessions"
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                code = ""
                with contextlib.suppress(Exception):
                    code = str((await resp.json()).get("error", ""))
                r.abuse_outcome = f"http {resp.status} {code}".strip()
        r.abuse_expected = r.abuse_outcome == EXPECTED[plan.abuse]
        r.ok = r.abuse_expected
        if not r.ok:
            r.error = f"abuse_{plan.abuse}_unanswered"
    except Exception as exc:  # noqa: BLE001
        r.fail(_platform_error(exc))
    r.end = time.time()
    return r
