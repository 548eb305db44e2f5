"""Redis round trips on ``/metrics``: a real signalling node times every command and
script call it makes (by operation) and counts the failed ones; a real matchmaker on
Redis does the same per store operation. Redis is a real ``redis-server``, stopped
mid-test for the errors."""

from __future__ import annotations

import os

import aiohttp
import pytest

from matchmaker.client import ApiError, MatchmakerApi
from pixelfleet.net import free_port
from pixelfleet.tokens import TokenKeys, mint
from tests.conftest import StartProcess
from tests.integration.test_matchmaker_observability import ADMIN, AGENT, env_for
from tests.support.hosts import heartbeat, register_host
from tests.support.redis_server import RedisServer
from tests.support.scrape import Samples, scrape, value
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SECRET = "s" * 40
KEYS = TokenKeys.hs256(SECRET)


def moved(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def upgrade(http: aiohttp.ClientSession, port: int, token: str) -> int:
    try:
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/?token={token}")
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


async def test_signalling_times_its_redis_commands_and_counts_failures(
    redis_tcp: RedisServer, start_process: StartProcess
) -> None:
    """Each player upgrade with a session token is one ``SET NX`` (the single-use ledger):
    three fresh tokens and one replay are four timed ``set`` round trips; with Redis
    stopped, the next upgrade's ``set`` is one error (and the upgrade 503)."""
    S = "pixelfleet_signaling_redis_"
    player, streamer = free_port(), free_port()
    env = {**os.environ, "PIXELFLEET_SESSION_TOKEN_SECRET": SECRET, "PIXELFLEET_NODE_TTL_S": "1.5"}
    node = await start_process(
        "signaling", "--state-url", redis_tcp.url, "--node-id", "A",
        "--player-port", str(player), "--streamer-port", str(streamer), "--sfu-port", "-1", env=env,
    )  # fmt: skip
    await node.wait_for_port(player)
    metrics = f"http://127.0.0.1:{player}/metrics"
    tokens = [mint(KEYS, tenant="a", session_id=f"s{i}", streamer_id="Cam", ttl_s=300) for i in range(4)]
    async with aiohttp.ClientSession() as http:
        before = await eventually(
            lambda: _with(http, metrics, S + "round_trip_seconds_count", op="script_beat"), "a first beat", 30
        )
        assert [await upgrade(http, player, t) for t in (*tokens[:3], tokens[0])] == [101, 101, 101, 401]
        answered = await scrape(http, metrics)
        await redis_tcp.kill()
        assert await upgrade(http, player, tokens[3]) == 503
        down = await scrape(http, metrics)
    assert moved(answered, before, S + "round_trip_seconds_count", op="set") == 4
    assert moved(answered, before, S + "errors_total", op="set") == 0
    assert value(answered, S + "round_trip_seconds_bucket", op="set", le="+Inf") == value(
        answered, S + "round_trip_seconds_count", op="set"
    )
    assert value(answered, S + "round_trip_seconds_sum", op="set") > 0
    assert moved(down, answered, S + "errors_total", op="set") == 1
    assert moved(down, answered, S + "round_trip_seconds_count", op="set") == 0


async def _with(http: aiohttp.ClientSession, url: str, name: str, **labels: str) -> Samples | None:
    samples = await scrape(http, url)
    return samples if value(samples, name, **labels) > 0 else None


async def test_matchmaker_times_its_store_operations_and_counts_failures(
    redis_tcp: RedisServer, start_process: StartProcess
) -> None:
    """Every store operation on Redis is timed under its name, the API's own included
    (not only the probe that /readyz and /metrics make); one that fails is counted."""
    M = "pixelfleet_matchmaker_redis_"
    port = free_port()
    env = env_for(redis_tcp.url, PIXELFLEET_MATCHMAKER__SWEEP_INTERVAL_S="3600")  # no background store traffic
    mm = await start_process("matchmaker", "--port", str(port), "--log-level", "warning", env=env)
    await mm.wait_for_port(port)
    base = f"http://127.0.0.1:{port}"
    api = MatchmakerApi(base, agent_token=AGENT, admin_token=ADMIN)
    async with aiohttp.ClientSession() as http:
        try:
            await register_host(api, "h1", slots=2)
            before = await scrape(http, base + "/metrics")
            for _ in range(3):
                await api.heartbeat("h1", heartbeat(["ready", "ready"]))
            answered = await scrape(http, base + "/metrics")
            await redis_tcp.kill()
            with pytest.raises(ApiError):
                await api.heartbeat("h1", heartbeat(["ready", "ready"]))
            down = await scrape(http, base + "/metrics")  # the store is away: /metrics still answers
        finally:
            await api.aclose()
    assert moved(answered, before, M + "round_trip_seconds_count", op="heartbeat") == 3
    assert moved(answered, before, M + "errors_total", op="heartbeat") == 0
    assert value(before, M + "round_trip_seconds_count", op="register_host") >= 1
    assert moved(down, answered, M + "errors_total", op="heartbeat") == 1
    assert moved(down, answered, M + "round_trip_seconds_count", op="heartbeat") == 0
