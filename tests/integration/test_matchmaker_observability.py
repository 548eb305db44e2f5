"""A real ``pixelfleet matchmaker``: ``/metrics`` moves by exactly what scripted sessions
did, and ``/readyz`` follows Redis (stopped, started again) and the drain at SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import jwt
import pytest

from matchmaker.client import ApiError, MatchmakerApi
from matchmaker.models import Assigned, Waiting
from pixelfleet.net import free_port, wait_for_port
from tests.conftest import StartProcess, require_binary
from tests.support.hosts import heartbeat, register_host
from tests.support.scrape import scrape, value

pytestmark = pytest.mark.integration

AGENT = "agent-token-" + "a" * 24
ADMIN = "admin-token-" + "b" * 24
CALLER_SECRET = "caller-secret-" + "c" * 32
M = "pixelfleet_matchmaker_"


def caller_token(tenant: str) -> str:
    return jwt.encode(
        {"tenant": tenant, "sub": "caller-1", "exp": int(time.time()) + 600}, CALLER_SECRET, algorithm="HS256"
    )


def env_for(state_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PIXELFLEET_STATE_URL": state_url,
        "PIXELFLEET_AGENT_TOKEN": AGENT,
        "PIXELFLEET_ADMIN_TOKEN": ADMIN,
        "PIXELFLEET_SESSION_TOKEN_SECRET": "session-secret-" + "d" * 32,
        "PIXELFLEET_MATCHMAKER__CALLER_JWT_SECRET": CALLER_SECRET,
        "PIXELFLEET_MATCHMAKER__KEY_PREFIX": f"ob{uuid.uuid4().hex[:8]}",
        "PIXELFLEET_MATCHMAKER__SWEEP_INTERVAL_S": "0.05",
        **extra,
    }


async def test_metrics_move_by_what_sessions_did(start_process: StartProcess) -> None:
    port = free_port()
    mm = await start_process("matchmaker", "--port", str(port), "--log-level", "warning", env=env_for("memory://"))
    await mm.wait_for_port(port)
    base = f"http://127.0.0.1:{port}"
    api = MatchmakerApi(base, agent_token=AGENT, admin_token=ADMIN)
    async with aiohttp.ClientSession() as http:
        try:
            await register_host(api, "h1", slots=2)
            await api.heartbeat("h1", heartbeat(["ready", "ready"]))
            before = await scrape(http, base + "/metrics")
            assert value(before, M + "slots", tenant="acme", app="game", state="ready") == 2
            assert value(before, M + "hosts", state="live") == 1
            token = caller_token("acme")
            a = await api.create_session("game", caller_token=token)
            b = await api.create_session("game", caller_token=token)
            queued = await api.create_session("game", caller_token=token, client_key="k3")
            assert isinstance(a, Assigned) and isinstance(b, Assigned) and isinstance(queued, Waiting)
            with pytest.raises(ApiError):
                await api.create_session("no-such-app-" + uuid.uuid4().hex, caller_token=token)
            during = await scrape(http, base + "/metrics")
            assert value(during, M + "queue_length", tenant="acme", app="game") == 1
            assert value(during, M + "slots", tenant="acme", app="game", state="assigned") == 2
            assert value(during, M + "sessions", tenant="acme", app="game", state="assigned") == 2
            ended = await api.end_session(a.session_id)  # the slot resets, then the queued ticket takes it
            freed = int(ended.slot_id.rsplit("/", 1)[1])  # the agent reset it: READY again
            states = ["assigned", "assigned"]
            states[freed] = "ready"
            await api.heartbeat("h1", heartbeat(states, reset_for={freed: a.session_id}))
            for _ in range(100):
                after = await scrape(http, base + "/metrics")
                if value(after, M + "queue_wait_seconds_count", tenant="acme", app="game") == 1:
                    break
                await asyncio.sleep(0.05)
        finally:
            await api.aclose()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(M + "allocations_total", tenant="acme", app="game", outcome="assigned") == 2
    assert moved(M + "allocations_total", tenant="acme", app="game", outcome="queued") == 1
    assert moved(M + "allocations_total", tenant="acme", app="other", outcome="unknown_app") == 1
    assert moved(M + "session_ends_total", reason="force_ended") == 1
    assert moved(M + "queue_wait_seconds_count", tenant="acme", app="game") == 1
    assert value(after, M + "queue_length", tenant="acme", app="game") == 0
    assert value(after, M + "store_up") == 1


async def test_limit_refusals_are_counted_by_limit_and_tenant(start_process: StartProcess) -> None:
    """A quota and a rate limit hit on a real replica move ``limit_refusals_total`` under
    their limit and tenant; a request over quota that takes back its own session does not."""
    port = free_port()
    env = env_for(
        "memory://",
        PIXELFLEET_MATCHMAKER__QUOTA_SUBJECT_SESSIONS="1",
        PIXELFLEET_MATCHMAKER__RATE_SUBJECT_PER_S="0.001",
        PIXELFLEET_MATCHMAKER__RATE_SUBJECT_BURST="3",
    )
    mm = await start_process("matchmaker", "--port", str(port), "--log-level", "warning", env=env)
    await mm.wait_for_port(port)
    base = f"http://127.0.0.1:{port}"
    api = MatchmakerApi(base, agent_token=AGENT, admin_token=ADMIN)
    token = caller_token("acme")
    async with aiohttp.ClientSession() as http:
        try:
            await register_host(api, "h1", slots=2)
            await api.heartbeat("h1", heartbeat(["ready", "ready"]))
            before = await scrape(http, base + "/metrics")
            first = await api.create_session("game", caller_token=token, client_key="k1")
            again = await api.create_session("game", caller_token=token, client_key="k1")  # over quota: its own
            assert isinstance(first, Assigned) and isinstance(again, Assigned)
            assert again.session_id == first.session_id
            refusals = []
            for _ in range(2):  # the quota (1 session), then the subject's rate (3 requests)
                with pytest.raises(ApiError) as caught:
                    await api.create_session("game", caller_token=token, client_key="k2")
                refusals.append((caught.value.status, caught.value.code))
            after = await scrape(http, base + "/metrics")
        finally:
            await api.aclose()
    assert refusals == [(429, "quota_exceeded"), (429, "rate_limited")]

    def moved(limit: str) -> float:
        name = M + "limit_refusals_total"
        return value(after, name, limit=limit, tenant="acme") - value(before, name, limit=limit, tenant="acme")

    assert moved("quota_subject_sessions") == 1
    assert moved("rate_limited_subject") == 1
    assert moved("rate_limited_ip") == 0


async def start_redis(port: int, folder: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        require_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(folder),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await wait_for_port("127.0.0.1", port, timeout_s=10)
    return proc


async def stop_redis(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def ready(http: aiohttp.ClientSession, url: str) -> tuple[int, list[str]]:
    async with http.get(url) as r:
        body = await r.json()
        return r.status, body["reasons"]


async def until_ready(http: aiohttp.ClientSession, url: str, status: int) -> list[str]:
    for _ in range(200):
        got, reasons = await ready(http, url)
        if got == status:
            return reasons
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never answered {status}")


async def test_readyz_follows_redis_and_the_drain(start_process: StartProcess, tmp_path: Path) -> None:
    redis_port, port = free_port(), free_port()
    redis = await start_redis(redis_port, tmp_path)
    try:
        env = env_for(f"redis://127.0.0.1:{redis_port}/0", PIXELFLEET_MATCHMAKER__DRAIN_DELAY_S="30")
        mm = await start_process("matchmaker", "--port", str(port), "--log-level", "warning", env=env)
        await mm.wait_for_port(port)
        url = f"http://127.0.0.1:{port}/readyz"
        async with aiohttp.ClientSession() as http:
            assert await ready(http, url) == (200, [])
            async with http.get(f"http://127.0.0.1:{port}/livez") as r:
                assert r.status == 200
            await stop_redis(redis)
            assert await until_ready(http, url, 503) == ["state store unreachable"]
            async with http.get(f"http://127.0.0.1:{port}/livez") as r:
                assert r.status == 200  # alive, only not ready
            metrics = await scrape(http, f"http://127.0.0.1:{port}/metrics")
            assert value(metrics, M + "store_up") == 0
            assert value(metrics, M + "store_errors_total") >= 1
            redis = await start_redis(redis_port, tmp_path)
            assert await until_ready(http, url, 200) == []
            mm.send(signal.SIGTERM)  # drain: 503 for drain_delay_s, port still open
            assert await until_ready(http, url, 503) == ["draining"]
    finally:
        await stop_redis(redis)
