"""A real ``pixelfleet matchmaker``: ``/metrics`` tells a host lost (stopped heartbeating
while not draining: pages) from one retired by a scale-in (drained, then stopped)."""

from __future__ import annotations

import aiohttp
import pytest

from matchmaker.client import MatchmakerApi
from pixelfleet.net import free_port
from tests.conftest import StartProcess
from tests.integration.test_matchmaker_observability import ADMIN, AGENT, M, env_for
from tests.support.hosts import heartbeat, register_host
from tests.support.scrape import Samples, scrape, value
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_a_drained_host_that_stops_is_retired_not_dead(start_process: StartProcess) -> None:
    port = free_port()
    env = env_for("memory://", PIXELFLEET_MATCHMAKER__HEARTBEAT_TTL_S="1")
    mm = await start_process("matchmaker", "--port", str(port), "--log-level", "warning", env=env)
    await mm.wait_for_port(port)
    base = f"http://127.0.0.1:{port}"
    api = MatchmakerApi(base, agent_token=AGENT, admin_token=ADMIN)
    async with aiohttp.ClientSession() as http:
        try:
            for host in ("scaled-in", "crashed"):
                await register_host(api, host, slots=1)
                await api.heartbeat(host, heartbeat(["ready"]))
            await api.drain("scaled-in")  # the autoscaler drains, then terminates it
            during = await scrape(http, base + "/metrics")
            assert value(during, M + "hosts", state="live") == 1
            assert value(during, M + "hosts", state="draining") == 1

            async def both_silent() -> Samples | None:  # neither host beats again (1 s deadline)
                samples = await scrape(http, base + "/metrics")
                quiet = value(samples, M + "hosts", state="draining") + value(samples, M + "hosts", state="live")
                return samples if quiet == 0 else None

            after: Samples = await eventually(both_silent, "both hosts past their heartbeat deadline", 30)
        finally:
            await api.aclose()
    assert value(after, M + "hosts", state="retired") == 1  # drained, then stopped: no page
    assert value(after, M + "hosts", state="dead") == 1  # stopped while serving: lost
    assert value(after, M + "hosts", state="live") == 0
    assert value(after, M + "hosts", state="draining") == 0


async def test_ready_slots_of_a_draining_host_are_not_counted_ready(start_process: StartProcess) -> None:
    """Allocation places nothing on a draining host, so its READY slots count as draining
    (``slots`` gauge, and so ``PixelfleetNoReadySlots``) until the drain is lifted."""
    port = free_port()
    mm = await start_process("matchmaker", "--port", str(port), "--log-level", "warning", env=env_for("memory://"))
    await mm.wait_for_port(port)
    base = f"http://127.0.0.1:{port}"
    api = MatchmakerApi(base, agent_token=AGENT, admin_token=ADMIN)
    game = {"tenant": "acme", "app": "game"}
    async with aiohttp.ClientSession() as http:
        try:
            for host in ("h1", "h2"):
                await register_host(api, host, slots=2)
                await api.heartbeat(host, heartbeat(["ready", "ready"]))
            before = await scrape(http, base + "/metrics")
            await api.drain("h1")
            drained = await scrape(http, base + "/metrics")
            await api.drain("h1", False)
            undrained = await scrape(http, base + "/metrics")
        finally:
            await api.aclose()
    assert value(before, M + "slots", **game, state="ready") == 4
    assert value(before, M + "slots", **game, state="draining") == 0
    assert value(drained, M + "slots", **game, state="ready") == 2
    assert value(drained, M + "slots", **game, state="draining") == 2
    assert value(undrained, M + "slots", **game, state="ready") == 4
    assert value(undrained, M + "slots", **game, state="draining") == 0
