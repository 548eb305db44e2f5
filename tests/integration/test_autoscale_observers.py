"""The controller's two readers of a real matchmaker (memory store) agree on the queued
demand per (tenant, app, preferred region): in process, and over the admin API, whose queue
listing carries each waiting ticket's preferred region. A regional pool then counts the
tickets preferring its region plus those preferring none."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest

from autoscale.controller import ApiObserver, InProcessObserver, pool_view
from autoscale.providers.base import ProviderHost
from matchmaker.client import MatchmakerApi
from matchmaker.config import MatchmakerSettings
from matchmaker.models import Assigned, Waiting
from matchmaker.server import MatchmakerServer, build_matchmaker
from tests.support.hosts import heartbeat, register_host

pytestmark = pytest.mark.integration

AGENT = "agent-token-0123456789"
ADMIN = "admin-token-0123456789"
CALLER_SECRET = "caller-secret-" + "x" * 32


@pytest.fixture
async def server() -> AsyncIterator[MatchmakerServer]:
    settings = MatchmakerSettings(
        port=0,
        state_url="memory://",
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        session_token_secret="session-secret-" + "y" * 32,
        agent_token=AGENT,
        admin_token=ADMIN,
        caller_jwt_secret=CALLER_SECRET,
    )
    srv = MatchmakerServer(settings, build_matchmaker(settings))
    await srv.start()
    yield srv
    await srv.stop()


async def test_queued_demand_per_region_comes_through_both_observers(server: MatchmakerServer) -> None:
    caller = jwt.encode(
        {"tenant": "acme", "sub": "caller-1", "exp": int(time.time()) + 300}, CALLER_SECRET, algorithm="HS256"
    )
    api = MatchmakerApi(f"http://127.0.0.1:{server.port}", caller_token=caller, agent_token=AGENT, admin_token=ADMIN)
    try:
        await register_host(api, "h1", slots=1)  # region "eu", one slot of acme/game
        await api.heartbeat("h1", heartbeat(["ready"]))
        assert isinstance(await api.create_session("game", region="eu"), Assigned)  # the one slot
        for region in ("eu", "us", None, "us", "eu", "us"):
            assert isinstance(await api.create_session("game", region=region), Waiting)

        [listing] = await api.queues()
        assert [t.region for t in listing.tickets] == ["eu", "us", None, "us", "eu", "us"]
        expected = {("acme", "game", "eu"): 2, ("acme", "game", "us"): 3, ("acme", "game", None): 1}
        over_api = await ApiObserver(api).snapshot()
        in_process = await InProcessObserver(server.matchmaker).snapshot()
        assert over_api.queued == expected
        assert in_process.queued == expected

        eu = pool_view(0.0, [ProviderHost(host_id="h1")], over_api, "acme", "game", 1, region="eu")
        assert [(h.state, h.busy) for h in eu.hosts] == [("ready", 1)] and eu.queued == 2 + 1
        assert pool_view(0.0, [], over_api, "acme", "game", 1, region="us").queued == 3 + 1
        assert pool_view(0.0, [], over_api, "acme", "game", 1).queued == 6
    finally:
        await api.aclose()
