"""A real ``pixelfleet matchmaker --records FILE`` ends sessions for three reasons; then
``pixelfleet records summary`` adds the file up, each session once, within the bounds the
test measured around each step (the matchmaker's clock is the same wall clock)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import jwt
import msgspec
import pytest

from matchmaker.client import MatchmakerApi
from matchmaker.models import Assigned, SessionRecord
from matchmaker.records import times_ordered
from pixelfleet.net import free_port
from tests.conftest import StartProcess
from tests.support.hosts import heartbeat, register_host

pytestmark = pytest.mark.integration

AGENT = "agent-token-" + "a" * 24
ADMIN = "admin-token-" + "b" * 24
CALLER_SECRET = "caller-secret-" + "c" * 32
TTL_S = 1.5
SLACK_S = 0.002  # records round durations to the millisecond
T = TypeVar("T")


def caller_token(tenant: str) -> str:
    return jwt.encode(
        {"tenant": tenant, "sub": "caller-1", "exp": int(time.time()) + 600}, CALLER_SECRET, algorithm="HS256"
    )


async def timed(call: Awaitable[T]) -> tuple[float, float, T]:
    """A call's send and reply times: what it did happened within them."""
    sent = time.time()
    result = await call
    return sent, time.time(), result


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def state_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url"))


@contextlib.asynccontextmanager
async def beating(api: MatchmakerApi, host: str, states: list[str]) -> AsyncIterator[None]:
    """Heartbeats for ``host`` every 0.2 s while inside (the first before): it stays alive
    however slowly the test runs."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(0.2)
            await api.heartbeat(host, heartbeat(states))

    await api.heartbeat(host, heartbeat(states))
    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_summary_of_a_matchmakers_records(state_url: str, tmp_path: Path, start_process: StartProcess) -> None:
    port = free_port()
    records = tmp_path / "records.jsonl"
    env = {
        **os.environ,
        "PIXELFLEET_STATE_URL": state_url,
        "PIXELFLEET_AGENT_TOKEN": AGENT,
        "PIXELFLEET_ADMIN_TOKEN": ADMIN,
        "PIXELFLEET_SESSION_TOKEN_SECRET": "session-secret-" + "d" * 32,
        "PIXELFLEET_MATCHMAKER__CALLER_JWT_SECRET": CALLER_SECRET,
        "PIXELFLEET_MATCHMAKER__KEY_PREFIX": f"rs{uuid.uuid4().hex[:8]}",
        "PIXELFLEET_MATCHMAKER__HEARTBEAT_TTL_S": str(TTL_S),
        "PIXELFLEET_MATCHMAKER__RECONNECT_GRACE_S": "0",  # a disconnect ends the session at once
        "PIXELFLEET_MATCHMAKER__SWEEP_INTERVAL_S": "0.05",
    }
    mm = await start_process(
        "matchmaker", "--port", str(port), "--records", str(records), "--log-level", "warning", env=env
    )
    await mm.wait_for_port(port)
    api = MatchmakerApi(f"http://127.0.0.1:{port}", agent_token=AGENT, admin_token=ADMIN)
    try:
        # h1: two acme/game slots, half a GPU each; h2: one beta/maze slot, no share sent (1.0).
        await register_host(api, "h1", slots=2, gpu_share=0.5)
        await register_host(api, "h2", tenant="beta", app="maze")
        async with beating(api, "h1", ["ready", "ready"]):
            h2_beat, _, _ = await timed(api.heartbeat("h2", heartbeat(["ready"])))
            alloc: dict[str, tuple[float, float, Assigned]] = {}
            conn: dict[str, tuple[float, float, object]] = {}
            end: dict[str, tuple[float, float]] = {}
            for name, tenant, app in (("a", "acme", "game"), ("b", "acme", "game"), ("c", "beta", "maze")):
                sent, got, reply = await timed(api.create_session(app, caller_token=caller_token(tenant)))
                assert isinstance(reply, Assigned), reply
                alloc[name] = (sent, got, reply)
            sid = {name: a.session_id for name, (_, _, a) in alloc.items()}
            for name, (_, _, a) in alloc.items():
                conn[name] = await timed(api.session_event(a.session_id, a.token, "connected"))
            # a: the player leaves; b: an operator ends it; c: its host h2 goes silent.
            end["a"] = (await timed(api.session_event(sid["a"], alloc["a"][2].token, "disconnected")))[:2]
            end["b"] = (await timed(api.end_session(sid["b"])))[:2]
            await mm.wait_until(lambda: records.exists() and len(records.read_bytes().splitlines()) >= 3, "3 records")
            seen = time.time()
    finally:
        await api.aclose()
    written = [msgspec.json.decode(line, type=SessionRecord) for line in records.read_bytes().splitlines()]

    by_id = {r.session_id: r for r in written}
    assert sorted(by_id) == sorted(sid.values()) and len(written) == 3
    assert all(times_ordered(r) for r in written)
    assert [by_id[sid[n]].gpu_share for n in "abc"] == [0.5, 0.5, 1.0]
    assert [by_id[sid[n]].end_reason for n in "abc"] == ["player_left", "force_ended", "host_dead"]

    # The file twice, as if a replica had written every record again: each session counts once.
    summary = await start_process("records", "summary", str(records), str(records), "--json")
    assert await summary.wait() == 0, summary.output()
    body = json.loads(summary.output(None))
    assert (body["records"], body["repeats"], body["skipped"], body["out_of_order"]) == (6, 3, [], 0)
    groups = {(g["tenant"], g["app"], g["end_reason"]): g for g in body["groups"]}
    assert {k: g["sessions"] for k, g in groups.items()} == {
        ("acme", "game", "player_left"): 1,
        ("acme", "game", "force_ended"): 1,
        ("beta", "maze", "host_dead"): 1,
    }
    assert body["total"]["sessions"] == 3
    assert [t["tenant"] for t in body["tenants"]] == ["acme", "beta"]

    def within(value_s: float, low_s: float, high_s: float) -> None:
        assert low_s - SLACK_S <= value_s <= high_s + SLACK_S, (value_s, low_s, high_s)

    # (connected, held) bounds: connected from the connect call to the end, held from the allocation.
    c_end = (h2_beat + TTL_S, seen)  # dead: silent for the TTL after its last heartbeat
    bounds = {
        ("acme", "game", "player_left"): (conn["a"], alloc["a"], end["a"], 0.5),
        ("acme", "game", "force_ended"): (conn["b"], alloc["b"], end["b"], 0.5),
        ("beta", "maze", "host_dead"): (conn["c"], alloc["c"], c_end, 1.0),
    }
    for key, (connected, allocated, ended, share) in bounds.items():
        within(groups[key]["minutes"] * 60, ended[0] - connected[1], ended[1] - connected[0])
        within(groups[key]["gpu_hours"] * 3600 / share, ended[0] - allocated[1], ended[1] - allocated[0])
    total_minutes = sum(g["minutes"] for g in groups.values())
    assert body["total"]["minutes"] == pytest.approx(total_minutes, abs=1e-5)
