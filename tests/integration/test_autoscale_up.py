"""``pixelfleet up --autoscale``: players arrive through the matchmaker API (as the player
page and signalling would report them), the local fleet grows; most leave, the fleet
shrinks, and the players still playing are never cut off by a scale-in."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from matchmaker.client import MatchmakerApi
from matchmaker.models import Assigned, Waiting
from pixelfleet.net import free_port
from tests.conftest import StartProcess

pytestmark = pytest.mark.integration

CONFIG = {
    "policy": {"min_hosts": 1, "max_hosts": 4, "slots_per_host": 1, "lead_time_s": 5, "scale_in_cooldown_s": 4},
    "forecast": {"quantile": 0.6, "bucket_s": 10, "recent_window_s": 10, "history_days": 0},
    "period_s": 1.0,
}


async def live_hosts(api: MatchmakerApi) -> set[str]:
    return {h.host_id for h in await api.hosts() if not h.dead}


async def wait_for(what: str, check: object, timeout_s: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


async def test_local_fleet_grows_and_shrinks_without_cutting_players(
    start_process: StartProcess, tmp_path: Path
) -> None:
    port, streamer = free_port(), free_port()
    config, decisions, records = tmp_path / "autoscale.json", tmp_path / "decisions.jsonl", tmp_path / "records.jsonl"
    config.write_text(json.dumps(CONFIG))
    env = {
        **os.environ,
        "PIXELFLEET_ADMIN_TOKEN": "as-admin",
        "PIXELFLEET_MATCHMAKER__RECONNECT_GRACE_S": "0.3",
        "PIXELFLEET_MATCHMAKER__CONNECT_TIMEOUT_S": "600",
    }
    up = await start_process(
        "up", "--autoscale", "--autoscale-config", str(config), "--autoscale-log", str(decisions),
        "--player-port", str(port), "--streamer-port", str(streamer), "--sfu-port", "-1",
        "--width", "160", "--height", "96", "--fps", "5", "--records", str(records),
        env=env, new_session=True,
    )  # fmt: skip
    await up.wait_for_port(port, timeout_s=60)
    api = MatchmakerApi(f"http://127.0.0.1:{port}", admin_token="as-admin")
    try:
        # The minimum pool: one host, its slot READY.
        async def one_ready() -> bool:
            return any(s.state == "ready" for s in await api.slots())

        await wait_for("the first host", one_ready)

        # Four players: the first takes the READY slot, the rest queue until hosts come up.
        players: list[tuple[str, str]] = []  # (session_id, token)
        tickets = []
        for i in range(4):
            reply = await api.create_session("default", client_key=f"p{i}")
            if isinstance(reply, Assigned):
                players.append((reply.session_id, reply.token))
            else:
                assert isinstance(reply, Waiting)
                tickets.append(reply.ticket_id)

        async def all_served() -> bool:
            for t in list(tickets):
                status = await api.ticket(t)
                if isinstance(status, Assigned):
                    players.append((status.session_id, status.token))
                    tickets.remove(t)
            return not tickets

        await wait_for("every queued player to get a slot", all_served, timeout_s=120)
        for session_id, token in players:
            await api.session_event(session_id, token, "connected")
        grown = await live_hosts(api)
        assert len(grown) >= 4, grown  # the fleet grew to the demand

        # Three leave; one keeps playing.
        keep_id, _ = players[0]
        keep_host = next(s.host_id for s in await api.sessions() if s.session_id == keep_id)
        for session_id, token in players[1:]:
            await api.session_event(session_id, token, "disconnected")

        async def shrunk() -> bool:
            return len(await live_hosts(api)) < len(grown)

        await wait_for("the fleet to shrink", shrunk, timeout_s=120)
        live = {s.session_id: s for s in await api.sessions()}
        assert keep_id in live and live[keep_id].state == "connected"  # not cut off
        assert keep_host in await live_hosts(api)
        host = next(h for h in await api.hosts() if h.host_id == keep_host)
        assert not host.draining  # a host with a player is never drained

        async def three_records() -> bool:
            return records.exists() and len(records.read_text().splitlines()) >= 3

        await wait_for("the leavers' session records", three_records)
        ended = [json.loads(line) for line in records.read_text().splitlines()]
        assert {r["end_reason"] for r in ended} == {"player_left"}, ended  # nobody was cut by a scale-in
        assert keep_id not in {r["session_id"] for r in ended}
    finally:
        await api.aclose()
    await up.stop()

    logged = [json.loads(line) for line in decisions.read_text().splitlines()]
    assert any(d["launch"] for d in logged) and any(d["drain"] for d in logged) and any(d["terminate"] for d in logged)
    for d in logged:
        assert keep_host not in d["drain"]
