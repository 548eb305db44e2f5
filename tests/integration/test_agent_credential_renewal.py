"""Streamer credentials end to end (issue 11): a real matchmaker minting short-lived
credentials, real signalling with the same key (credentials required), and the agent
with synthetic streamers. A streamer started right after registration gets in at its
first try; an idle streamer is restarted with the newest credential before its own
expires, and one whose credential expired while signalling was away is restarted at
once when signalling is back, the slot READY again each time. A renewal first reports the
slot draining: a session assigned before that (its player not connected yet) keeps the
slot and its streamer, and is not ended; a host's slots renew one at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gpu_agent.agent import Agent
from gpu_agent.client import HttpMatchmakerClient
from gpu_agent.config import AgentSettings
from gpu_agent.slots import Phase, Slot
from matchmaker.config import MatchmakerSettings
from matchmaker.records import MemorySink
from matchmaker.server import MatchmakerServer
from pixelfleet.net import free_port
from pixelfleet.tokens import LEEWAY_S, TokenKeys
from signaling.app import SignalingServer
from signaling.config import Settings
from tests.support import waiting
from tests.support.nvml_replay import RecordedSampler

pytestmark = pytest.mark.integration

AGENT = "agent-token-0123456789"
ADMIN = "admin-token-0123456789"
SECRET = "session-secret-" + "z" * 32
DATA = Path(__file__).parents[1] / "data"
WAIT = 90.0  # bounds a broken run; never a performance limit
REFUSED = ("streamer_credential_missing", "streamer_credential_invalid", "listing_unauthenticated")


async def eventually(check: Callable[[], Any], what: str, within_s: float = WAIT) -> Any:
    return await waiting.eventually(check, what, within_s)


class Box:
    """Signalling (restartable on the same ports), the matchmaker and one agent."""

    def __init__(self) -> None:
        self.ports = {"player_port": free_port(), "streamer_port": free_port(), "sfu_port": free_port()}
        self.signaling: SignalingServer | None = None
        self.refusals: dict[str, int] = {}  # summed over signalling's lives
        self.matchmaker: MatchmakerServer | None = None
        self.agent: Agent | None = None
        self.http = aiohttp.ClientSession()

    async def start_signaling(self) -> None:
        p = self.ports
        settings = Settings(
            session_token_secret=SECRET,
            admin_token=ADMIN,
            shutdown_grace_s=1.0,
            player_port=p["player_port"],
            streamer_port=p["streamer_port"],
            sfu_port=p["sfu_port"],
        )
        self.signaling = SignalingServer(settings, streamer_keys=TokenKeys.hs256(SECRET))  # credentials required
        await self.signaling.start()

    async def stop_signaling(self) -> None:
        assert self.signaling is not None
        await self.signaling.stop()
        for reason, n in self.signaling.node.access.counts.items():
            self.refusals[reason] = self.refusals.get(reason, 0) + n
        self.signaling = None

    def refused(self) -> dict[str, int]:
        live = self.signaling.node.access.counts if self.signaling else {}
        counts = {r: self.refusals.get(r, 0) + live.get(r, 0) for r in REFUSED}
        return {r: n for r, n in counts.items() if n}

    async def start(self, *, ttl_s: int, margin_s: float, slots: int = 1) -> Agent:
        await self.start_signaling()
        mm_port = free_port()
        self.matchmaker = MatchmakerServer(
            MatchmakerSettings(
                port=mm_port,
                session_token_secret=SECRET,
                agent_token=AGENT,
                admin_token=ADMIN,
                allow_anonymous=True,
                sweep_interval_s=0.05,
                heartbeat_ttl_s=ttl_s / 4,  # the shortest that keeps renewal ahead of expiry
                streamer_token_ttl_s=ttl_s,
            )
        )
        await self.matchmaker.start()
        player = self.ports["player_port"]
        s = AgentSettings(
            host_id="gpu-1",
            app="game",
            matchmaker_url=f"http://127.0.0.1:{mm_port}",
            agent_token=AGENT,
            signaling_url=f"ws://127.0.0.1:{player}",
            streamer_url=f"ws://127.0.0.1:{self.ports['streamer_port']}",
            signaling_api_url=f"http://127.0.0.1:{player}",
            slots=slots,
            res_x=160,
            res_y=120,
            fps=5,
            heartbeat_period_s=0.2,
            ready_poll_s=0.1,
            health_poll_s=0.2,
            backoff_initial_s=0.2,
            backoff_max_s=1.0,
            startup_timeout_s=60.0,
            sample_period_s=0.5,
            metrics_port=-1,
            retry_max_s=0.5,
            log_level="warning",
            credential_renew_margin_s=margin_s,
        )
        client = HttpMatchmakerClient(s.matchmaker_url, s.agent_token, timeout_s=2.0)
        self.agent = Agent(s, client, sampler=RecordedSampler(DATA / "nvml_a10g.json"))
        await self.agent.start()
        return self.agent

    async def listed_credential(self, streamer_id: str) -> str | None:
        """The credential id signalling lists for the streamer (asked with the admin token)."""
        url = f"http://127.0.0.1:{self.ports['player_port']}/api/streamers/{streamer_id}"
        try:
            async with self.http.get(url, headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                body = await r.json(content_type=None) if r.status == 200 else {}
        except aiohttp.ClientError:
            return None
        return body.get("credentialId") if body.get("streaming") else None

    async def matchmaker_ready(self) -> bool:
        return await self.matchmaker_state() == "ready"

    async def matchmaker_state(self, slot: str = "gpu-1/0") -> str | None:
        return (await self.matchmaker_states()).get(slot)

    async def matchmaker_states(self) -> dict[str, str]:
        return {sl["slot_id"]: sl["state"] for sl in await self.admin("GET", "/admin/slots")}

    async def admin(self, method: str, path: str) -> Any:
        url = f"http://127.0.0.1:{self.matchmaker.port if self.matchmaker else 0}/api/v1{path}"
        async with self.http.request(method, url, headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200, (method, path, r.status, await r.text())
            return await r.json()

    async def allocate(self) -> dict[str, Any]:
        """A player's allocation (anonymous caller), as the player page makes it."""
        url = f"http://127.0.0.1:{self.matchmaker.port if self.matchmaker else 0}/api/v1/sessions"
        async with self.http.post(url, json={"app": "game"}) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == 201, (r.status, body)
            return body

    async def aclose(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
        if self.matchmaker is not None:
            await self.matchmaker.stop()
        if self.signaling is not None:
            await self.stop_signaling()
        await self.http.close()


@pytest.fixture
async def box() -> AsyncIterator[Box]:
    b = Box()
    try:
        yield b
    finally:
        await b.aclose()


def launched_jti(slot: Slot) -> str:
    launched = slot._launched
    assert launched is not None, "launched without a credential"
    return launched.jti


async def test_first_launch_has_a_credential_and_idle_streamer_is_renewed_before_expiry(box: Box) -> None:
    # 20 s credentials, renewed by the matchmaker at 10 s left; the agent restarts an idle
    # streamer at 6 s left, with the credential minted at half life.
    agent = await box.start(ttl_s=20, margin_s=6.0)
    slot = agent.slots.slots[0]
    await eventually(lambda: slot.phase is Phase.READY, "the slot READY")
    first = launched_jti(slot)
    assert slot.starts == 1 and slot.restarts == 0  # in at the first try: launched with the registration's
    assert await box.listed_credential("gpu-1-0") == first
    assert box.refused() == {}  # no refusal at all, and no probe of signalling without a credential
    await eventually(box.matchmaker_ready, "READY at the matchmaker")

    await eventually(lambda: slot.renewals >= 1, "a renewal before expiry", within_s=40)
    assert slot.last_renewal == "before_expiry"
    renewed_at = time.time()
    await eventually(lambda: slot.phase is Phase.READY, "READY again after the renewal")
    second = launched_jti(slot)
    assert second != first and slot._launched is not None and slot._launched.expires_at > renewed_at
    assert await eventually(lambda: box.listed_credential("gpu-1-0"), "listed again") == second
    await eventually(box.matchmaker_ready, "READY again at the matchmaker")
    assert slot.restarts == 0 and box.refused() == {}


async def test_credential_expired_while_signalling_was_away_is_renewed_at_once(box: Box) -> None:
    # margin 0: no renewal ahead of expiry; the credential runs out during the outage.
    agent = await box.start(ttl_s=8, margin_s=0.0)
    slot = agent.slots.slots[0]
    await eventually(lambda: slot.phase is Phase.READY, "the slot READY")
    first, before = slot._launched, slot.renewals  # 0 unless a loaded box took 8 s to start it
    assert first is not None
    await box.stop_signaling()
    # Past the leeway too: within it signalling still takes the old credential, the
    # streamer reconnects with it and its renewal is an ordinary one before expiry.
    await asyncio.sleep(max(0.0, first.expires_at + LEEWAY_S - time.time()) + 1.0)
    assert slot.renewals == before  # signalling could not be asked: nothing decided meanwhile
    await box.start_signaling()
    await eventually(lambda: slot.renewals > before, "the renewal once signalling is back")
    assert slot.last_renewal == "expired"
    await eventually(lambda: slot.phase is Phase.READY, "READY again")
    assert launched_jti(slot) != first.jti and slot.restarts == 0
    assert await eventually(lambda: box.listed_credential("gpu-1-0"), "listed again") == launched_jti(slot)
    await eventually(box.matchmaker_ready, "READY again at the matchmaker")


async def test_a_session_assigned_before_the_renewal_keeps_its_slot(box: Box) -> None:
    """The agent cannot see a session whose player has not connected yet. Its renewal asks
    the matchmaker first (draining), hears busy, and keeps the streamer: the session is not
    ended (it used to end as slot_failed). The session's end then renews the streamer."""
    agent = await box.start(ttl_s=20, margin_s=6.0)
    slot = agent.slots.slots[0]
    await eventually(lambda: slot.phase is Phase.READY, "the slot READY")
    await eventually(box.matchmaker_ready, "READY at the matchmaker")
    first = launched_jti(slot)
    assigned = await box.allocate()  # before the renewal is due; no player ever connects
    assert assigned["status"] == "assigned" and assigned["streamer_id"] == "gpu-1-0"
    session = assigned["session_id"]

    await eventually(lambda: slot.renewal.kept >= 1, "the renewal answered busy", within_s=40)
    assert slot.renewals == 0 and slot.starts == 1 and slot.restarts == 0  # never restarted
    assert launched_jti(slot) == first and slot.phase is Phase.READY
    live = {s["session_id"]: s["state"] for s in await box.admin("GET", "/admin/sessions")}
    assert live == {session: "assigned"}
    assert await box.matchmaker_state() == "assigned"
    sink = box.matchmaker.matchmaker.sink if box.matchmaker else None
    assert isinstance(sink, MemorySink) and list(sink.records) == []  # nothing ended
    assert slot.report().state == "ready"  # the renewal cancelled: the heartbeat says ready again

    # The session's end resets the slot, and that launch takes the newest credential.
    await box.admin("DELETE", f"/admin/sessions/{session}")
    await eventually(lambda: slot.resets == 1 and slot.phase is Phase.READY, "reset and READY again")
    assert launched_jti(slot) != first
    await eventually(box.matchmaker_ready, "READY again at the matchmaker")
    assert [str(r.end_reason) for r in sink.records] == ["force_ended"]


async def test_a_hosts_slots_renew_one_at_a_time(box: Box) -> None:
    """Two slots whose credentials were minted together: never both out for renewal, as the
    agent holds turns and as the matchmaker sees them (sampled), and both renewed in time."""
    agent = await box.start(ttl_s=20, margin_s=6.0, slots=2)
    slots = agent.slots.slots
    await eventually(lambda: all(s.phase is Phase.READY for s in slots), "both slots READY")
    await eventually(lambda: _all_ready(box), "both READY at the matchmaker")
    firsts = [s._launched for s in slots]
    renewed_at: dict[int, float] = {}  # when each slot first ran with a newer credential
    out_agent: list[list[int]] = []  # slots out for renewal at once, as the agent saw them
    out_matchmaker: list[dict[str, str]] = []  # slot states the matchmaker listed, more than one out

    async def watch_agent() -> None:
        while True:
            out = [s.plan.index for s in slots if s.renewal.step is not None or s.phase is not Phase.READY]
            if len(out) > 1:
                out_agent.append(out)
            for s, first in zip(slots, firsts, strict=True):
                if s._launched is not first and s.phase is Phase.READY:
                    renewed_at.setdefault(s.plan.index, time.time())
            await asyncio.sleep(0.005)

    async def watch_matchmaker() -> None:
        while True:
            states = await box.matchmaker_states()
            if sum(st != "ready" for st in states.values()) > 1:
                out_matchmaker.append(states)
            await asyncio.sleep(0.02)

    watchers = [asyncio.create_task(watch_agent()), asyncio.create_task(watch_matchmaker())]
    try:
        await eventually(lambda: all(s.renewals >= 1 for s in slots), "both slots renewed", within_s=40)
        await eventually(lambda: all(s.phase is Phase.READY for s in slots), "both READY again")
        await eventually(lambda: _all_ready(box), "both READY again at the matchmaker")
    finally:
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    assert out_agent == [] and out_matchmaker == []
    assert len(agent.slots.gate.turns.holders) == 0
    for slot, first in zip(slots, firsts, strict=True):
        assert first is not None and slot.last_renewal == "before_expiry" and slot.restarts == 0
        assert launched_jti(slot) != first.jti
        assert renewed_at[slot.plan.index] < first.expires_at  # both renewed, one after the other, in time
    assert box.refused() == {}


async def _all_ready(box: Box) -> bool:
    states = await box.matchmaker_states()
    return len(states) == 2 and all(st == "ready" for st in states.values())
