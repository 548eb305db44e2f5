"""The operator dashboard's data endpoints (matchmaker/dashboard.py) on a real server:
the admin token, bounded pages with 500 hosts and 5,000 sessions, the event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from matchmaker import dashboard
from matchmaker.config import MatchmakerSettings
from matchmaker.http import MATCHMAKER
from matchmaker.models import AllocationRequest, Heartbeat, HostRegistration, Slot, SlotReport, SlotSpec, SlotState
from matchmaker.server import MatchmakerServer
from matchmaker.service import Allocation

pytestmark = pytest.mark.integration

ADMIN = "a" * 32
HOSTS, SLOTS = 500, 10


@pytest.fixture
async def server() -> AsyncIterator[MatchmakerServer]:
    # Nobody connects to the 5,000 sessions: they must outlive filling them, which takes
    # over a minute on a slow box (the default connect timeout, 60 s, ended some in CI).
    s = MatchmakerServer(
        MatchmakerSettings(
            port=0, session_token_secret="t" * 32, admin_token=ADMIN, heartbeat_ttl_s=3600.0, connect_timeout_s=3600.0
        )
    )
    await s.start()
    yield s
    await s.stop()


async def fill(server: MatchmakerServer) -> None:
    mm = server.matchmaker
    for h in range(HOSTS):
        host = f"h{h:03d}"
        specs = [SlotSpec(index=i, tenant="t", app="demo", streamer_id=f"{host}-{i}") for i in range(SLOTS)]
        await mm.register_host(HostRegistration(host_id=host, boot_id="b", signaling_url="ws://x", slots=specs))
        ready = [SlotReport(index=i, state=SlotState.READY, gpu_load=0.5, nvenc_load=0.25) for i in range(SLOTS)]
        await mm.heartbeat(host, Heartbeat(boot_id="b", slots=ready))
    for _ in range(HOSTS * SLOTS):
        assert isinstance(await mm.allocate(AllocationRequest(tenant="t", app="demo")), Allocation)


async def test_pages_stay_bounded_with_500_hosts_and_5000_sessions(server: MatchmakerServer) -> None:
    await fill(server)
    url = f"http://127.0.0.1:{server.port}/api/v1/admin/dashboard"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/state") as r:
            assert r.status == 401  # the data needs the admin token
        async with http.get(url + "/") as r:  # the page itself holds no data
            assert r.status == 200 and "admin token" in (await r.text()).lower()
        async with http.get(url + "/static/dashboard.js") as r:
            assert r.status == 200
        async with http.get(url + "/state?size=0", headers=auth) as r:
            assert r.status == 400
        async with http.get(url + "/state?hosts_page=9&sessions_page=99&size=50", headers=auth) as r:
            assert r.status == 200
            body = await r.read()
            state = await r.json()
        assert len(body) < 256 * 1024  # one page of each, whatever the fleet's size
        assert state["counts"]["hosts"] == {"live": HOSTS}
        assert state["counts"]["slots"] == {"assigned": HOSTS * SLOTS}
        assert state["counts"]["sessions"] == {"assigned": HOSTS * SLOTS}
        hosts, sessions = state["hosts"], state["sessions"]
        assert (hosts["total"], hosts["pages"], len(hosts["items"])) == (HOSTS, 10, 50)
        assert hosts["items"][0]["host_id"] == "h450" and len(hosts["items"][0]["slots"]) == SLOTS
        assert hosts["items"][0]["gpu_load"] == 0.5 or hosts["items"][0]["slots"][0]["gpu_load"] == 0.5
        assert (sessions["total"], sessions["pages"], len(sessions["items"])) == (5000, 100, 50)
        async with http.get(url + "/state?sessions_page=100", headers=auth) as r:
            assert (await r.json())["sessions"]["items"] == []  # past the end: empty, not an error
        async with http.get(url + "/events?size=5", headers=auth) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            first = await r.content.readuntil(b"\n\n")
        assert first.startswith(b"event: state\ndata: {")


async def test_the_chart_is_sampled_only_after_an_operator_looked() -> None:
    """A sample reads every slot: a replica whose dashboard nobody opened pays nothing."""
    mm = MatchmakerServer(MatchmakerSettings(port=0, session_token_secret="t" * 32, admin_token=ADMIN)).matchmaker
    calls = 0
    real = mm.store.slots

    async def counting() -> list[Slot]:
        nonlocal calls
        calls += 1
        return await real()

    mm.store.slots = counting  # type: ignore[method-assign]
    root = web.Application()
    root[MATCHMAKER] = mm
    root.add_subapp(dashboard.PREFIX, dashboard.create_app(mm, sample_s=0.02))
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with TestClient(TestServer(root, host="127.0.0.1")) as client:
        await asyncio.sleep(0.3)  # fifteen sample periods with nobody looking
        assert calls == 0
        history: list[Any] = []
        for _ in range(500):  # bounded: once looked at, the sampler runs every 0.02 s
            r = await client.get(dashboard.PREFIX + "/state", headers=auth)
            assert r.status == 200
            history = (await r.json())["history"]
            if history:
                break
            await asyncio.sleep(0.02)
        assert history, "no sample after an operator looked"
