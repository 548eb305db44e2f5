"""The operator dashboard (matchmaker/dashboard/) in a real Chromium against a real
matchmaker under a small load: sign in, counts equal the admin API's, drain a host, end
a session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from matchmaker.config import MatchmakerSettings
from matchmaker.models import AllocationRequest, EndReason, Heartbeat, HostRegistration, SlotReport, SlotSpec, SlotState
from matchmaker.server import MatchmakerServer
from matchmaker.service import Allocation, Queued
from tests.e2e.conftest import OpenPage

pytestmark = pytest.mark.e2e

ADMIN = "a" * 32
WAIT_MS = 30_000


@pytest.fixture
async def server() -> AsyncIterator[MatchmakerServer]:
    s = MatchmakerServer(MatchmakerSettings(port=0, session_token_secret="t" * 32, admin_token=ADMIN))
    await s.start()
    mm = s.matchmaker
    for h in ("h1", "h2"):
        specs = [SlotSpec(index=i, tenant="t", app="demo", streamer_id=f"{h}-{i}") for i in range(3)]
        await mm.register_host(HostRegistration(host_id=h, boot_id="b", signaling_url="ws://x", slots=specs))
        ready = [SlotReport(index=i, state=SlotState.READY, gpu_load=0.4, nvenc_load=0.2) for i in range(3)]
        await mm.heartbeat(h, Heartbeat(boot_id="b", slots=ready))
    yield s
    await s.stop()


async def admin(server: MatchmakerServer, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{server.port}/api/v1/admin/{path}", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as r,
    ):
        assert r.status == 200
        return await r.json()


async def test_dashboard_counts_and_drain(server: MatchmakerServer, open_page: OpenPage, tmp_path: Path) -> None:
    mm = server.matchmaker
    for _ in range(4):  # a small load: 4 of the 6 slots taken
        await mm.allocate(AllocationRequest(tenant="t", app="demo"))
    page, log = await open_page(f"http://127.0.0.1:{server.port}/api/v1/admin/dashboard/")
    await page.fill("#token", ADMIN)
    await page.click("#login button[type=submit]")
    await page.wait_for_function("() => window.dashboard.updates > 0", timeout=WAIT_MS)
    state = await page.evaluate("window.dashboard.state")
    sessions, slots, hosts = await admin(server, "sessions"), await admin(server, "slots"), await admin(server, "hosts")
    assert sum(state["counts"]["sessions"].values()) == len(sessions) == 4, log.text()
    assert state["counts"]["slots"] == {"assigned": 4, "ready": 2}
    assert sum(1 for s in slots if s["state"] == "ready") == 2
    assert state["counts"]["hosts"] == {"live": len(hosts)} == {"live": 2}
    assert await page.locator("[data-count=sessions] b").inner_text() == "4"
    assert await page.locator("#sessions tr[data-session]").count() == 4
    assert await page.locator("tr[data-host] [data-slot-state]").count() == 6

    # Drain the host that still has a READY slot: its slots leave the pool.
    host = next(s["host_id"] for s in slots if s["state"] == "ready")
    await page.click(f"tr[data-host='{host}'] button.drain")
    await page.wait_for_function(
        f"() => document.querySelector(\"tr[data-host='{host}'] .state\").textContent === 'draining'", timeout=WAIT_MS
    )
    drained = [h for h in await admin(server, "hosts") if h["host_id"] == host]
    assert drained[0]["draining"] is True
    # Its READY slot is no longer offered: new players go elsewhere or wait.
    placed = [await mm.allocate(AllocationRequest(tenant="t", app="demo")) for _ in range(3)]
    assert all(not isinstance(a, Allocation) or a.session.host_id != host for a in placed)
    assert any(isinstance(a, Queued) for a in placed)
    assert await page.locator(f"tr[data-host='{host}'] button.drain").count() == 0
    # End a session from its row: the admin API ends it as an operator's (force_ended),
    # its slot goes to be reset, and the row leaves the page.
    victim = await page.locator("#sessions tr[data-session]").first.get_attribute("data-session")
    assert victim is not None
    async with page.expect_response(lambda r: r.request.method == "DELETE") as answer:
        await page.click(f"tr[data-session='{victim}'] button.end")
    reply = await (await answer.value).json()
    assert (await answer.value).status == 200 and reply["session_id"] == victim, reply
    assert reply["end_reason"] == str(EndReason.FORCE_ENDED) == "force_ended"
    assert victim not in {s["session_id"] for s in await admin(server, "sessions")}
    freed = [s for s in await admin(server, "slots") if s["slot_id"] == reply["slot_id"]]
    assert freed[0]["state"] == "resetting" and freed[0]["ended_session"] == victim, freed
    assert await mm.store.end_reason("t", victim) is EndReason.FORCE_ENDED
    await page.wait_for_function(f"() => !document.querySelector(\"tr[data-session='{victim}']\")", timeout=WAIT_MS)
    # The page shows it: the drained host's READY slots count (and show) as draining, none
    # is left ready, and the snapshot is the one after the new sessions.
    live_sessions = len(await admin(server, "sessions"))
    await page.wait_for_function(
        """(n) => { const c = window.dashboard.state.counts;
            return c.hosts.draining === 1 && !c.slots.ready
              && Object.values(c.sessions).reduce((a, b) => a + b, 0) === n; }""",
        arg=live_sessions,
        timeout=WAIT_MS,
    )
    assert await page.locator("[data-count='ready slots'] b").inner_text() == "0"
    assert await page.locator(f"tr[data-host='{host}'] [data-slot-state=ready]").count() == 0
    assert await page.locator(f"tr[data-host='{host}'] [data-slot-state=draining]").count() >= 1
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 0
