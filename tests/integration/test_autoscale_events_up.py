"""``pixelfleet up --autoscale`` with an events file: an operator announces a launch to the
running autoscaler and the local fleet pre-warms for it with no player in sight; the
announcement called off, the fleet shrinks back to its minimum."""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import pytest

from matchmaker.client import MatchmakerApi
from pixelfleet.net import free_port
from tests.conftest import StartProcess
from tests.integration.test_autoscale_up import live_hosts, wait_for

pytestmark = pytest.mark.integration


def announce(path: Path, events: list[dict[str, object]]) -> None:
    """Write the events file whole and rename it into place (as docs/autoscaling.md advises)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"events": events}))
    tmp.replace(path)


async def test_an_announced_event_prewarms_the_running_fleet(start_process: StartProcess, tmp_path: Path) -> None:
    port, streamer = free_port(), free_port()
    config, decisions, events = tmp_path / "autoscale.json", tmp_path / "decisions.jsonl", tmp_path / "events.json"
    config.write_text(
        json.dumps(
            {
                # A lead time long enough that an event 5 minutes out is already within it.
                "policy": {
                    "min_hosts": 1,
                    "max_hosts": 4,
                    "slots_per_host": 1,
                    "lead_time_s": 600,
                    "scale_in_cooldown_s": 3,
                },
                "forecast": {"quantile": 0.6, "bucket_s": 10, "recent_window_s": 10, "history_days": 0},
                "period_s": 1.0,
                "events_file": str(events),  # not there yet: no events
            }
        )
    )
    env = {**os.environ, "PIXELFLEET_ADMIN_TOKEN": "ev-admin"}
    up = await start_process(
        "up", "--autoscale", "--autoscale-config", str(config), "--autoscale-log", str(decisions),
        "--player-port", str(port), "--streamer-port", str(streamer), "--sfu-port", "-1",
        "--width", "160", "--height", "96", "--fps", "5",
        env=env, new_session=True,
    )  # fmt: skip
    await up.wait_for_port(port, timeout_s=60)
    api = MatchmakerApi(f"http://127.0.0.1:{port}", admin_token="ev-admin")
    try:

        async def ready_hosts() -> set[str]:
            return {s.host_id for s in await api.slots() if s.state == "ready"}

        async def one_ready() -> bool:
            return len(await ready_hosts()) == 1

        await wait_for("the minimum pool", one_ready)

        start = time.time() + 300
        iso = datetime.datetime.fromtimestamp(start, datetime.UTC).isoformat().replace("+00:00", "Z")
        announce(events, [{"name": "launch", "start": iso, "end": start + 3600, "players": 2, "ramp_s": 0}])

        async def three_ready() -> bool:
            return len(await ready_hosts()) == 3  # 2 announced players + a 1-slot margin

        await wait_for("the fleet to pre-warm for the announced players", three_ready, timeout_s=120)
        assert await api.sessions() == []  # nobody came: the announcement alone grew it

        announce(events, [])  # called off

        async def back_to_one() -> bool:
            return len(await live_hosts(api)) == 1

        await wait_for("the fleet to shrink back", back_to_one, timeout_s=120)
    finally:
        await api.aclose()
    await up.stop()

    logged = [json.loads(line) for line in decisions.read_text().splitlines()]
    prewarm = [d for d in logged if d["launch"] and d["forecast"]["events"] == 2]
    assert prewarm and all(d["at"] < start and d["busy"] == 0 and d["queued"] == 0 for d in prewarm)
    assert max(d["desired_hosts"] for d in logged) == 3  # the announcement's size, not the pool's max
    assert any(d["drain"] and d["forecast"]["events"] == 0 for d in logged)  # shrunk once called off
