"""``pixelfleet up --autoscale`` under the load tester (issue 15's third proof): the
``platform-autoscale`` scenario sends players who really stream (aiortc, first frame,
input round trip) in a rush that builds, holds and ebbs. The local fleet grows for it and
shrinks after it, and no player is cut off by a scale-in: every session ends because its
player left, the tester saw every stream through to its end, and no host was drained
while a session was playing on it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from loadtest.scenario import load, plans
from matchmaker.client import MatchmakerApi
from pixelfleet.net import free_port
from tests.conftest import StartProcess
from tests.integration.test_autoscale_up import live_hosts, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "loadtest" / "scenarios" / "platform-autoscale.toml"
# The pool the scenario's comment documents: one host at rest, up to five, short cool-downs.
CONFIG = {
    "policy": {"min_hosts": 1, "max_hosts": 5, "slots_per_host": 1, "lead_time_s": 5, "scale_in_cooldown_s": 3},
    "forecast": {"quantile": 0.6, "bucket_s": 10, "recent_window_s": 10, "history_days": 0},
    "period_s": 1.0,
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_the_load_tester_grows_and_shrinks_the_fleet_and_cuts_no_player(
    start_process: StartProcess, tmp_path: Path
) -> None:
    planned = len(plans(load(SCENARIO)))
    port, streamer = free_port(), free_port()
    config, decisions, records = tmp_path / "autoscale.json", tmp_path / "decisions.jsonl", tmp_path / "records.jsonl"
    report_path = tmp_path / "report.json"
    config.write_text(json.dumps(CONFIG))
    env = {**os.environ, "PIXELFLEET_ADMIN_TOKEN": "lt-as-admin", "PIXELFLEET_MATCHMAKER__RECONNECT_GRACE_S": "0.3"}
    up = await start_process(
        "up", "--autoscale", "--autoscale-config", str(config), "--autoscale-log", str(decisions),
        "--player-port", str(port), "--streamer-port", str(streamer), "--sfu-port", "-1",
        "--width", "320", "--height", "180", "--fps", "5", "--records", str(records),
        env=env, new_session=True,
    )  # fmt: skip
    await up.wait_for_port(port, timeout_s=60)
    api = MatchmakerApi(f"http://127.0.0.1:{port}", admin_token="lt-as-admin")
    try:

        async def one_ready() -> bool:
            return any(s.state == "ready" for s in await api.slots())

        await wait_for("the minimum pool", one_ready)
        at_rest = await live_hosts(api)

        tester = await start_process(
            "loadtest", "run", str(SCENARIO), "--matchmaker", f"http://127.0.0.1:{port}",
            "--records", str(records), "--json", str(report_path), "--worker-log-dir", str(tmp_path),
            "--progress-s", "5", "--fail-on-error", env=env,
        )  # fmt: skip
        code = await tester.wait(timeout_s=420)  # bounded: 60 s of arrivals, queue and drain limits
        assert code == 0, tester.output()

        async def back_to_rest() -> bool:
            return len(await live_hosts(api)) <= len(at_rest)

        await wait_for("the fleet to shrink back to its minimum", back_to_rest, timeout_s=120)
        assert not await api.sessions()  # every player left by itself
    finally:
        await api.aclose()
    await up.stop()

    # The load tester: every planned player streamed to the end of its session.
    report = json.loads(report_path.read_text())
    s, w, mm = report["sessions"], report["webrtc"], report["counters"]["matchmaker"]
    assert (s["planned"], s["finished"], s["ok"], s["failed"]) == (planned, planned, planned, 0), report[
        "errors_by_kind"
    ]
    assert (w["sample"], w["connected"]) == (planned, planned) and not w["errors_by_kind"], w
    assert w["fps"]["p50"] > 0  # frames kept arriving over each hold
    assert w["input_rtt_ms"]["n"] >= 1  # and the streamers answered the players' input
    assert mm["agree"] and mm["records_end_reasons"] == {"player_left": planned}, mm

    # The decision log: the fleet grew during the rush and shrank after it, drain first.
    logged = read_jsonl(decisions)
    assert max(d["in_service_hosts"] for d in logged) >= 3, "the fleet never grew for the rush"
    assert any(d["launch"] and d["busy"] > 0 for d in logged)
    drained_at = {h: d["at"] for d in logged for h in d["drain"]}
    terminated_at = {h: d["at"] for d in logged for h in d["terminate"]}
    assert terminated_at, "the fleet never shrank"
    for host, t in terminated_at.items():
        assert host in drained_at and drained_at[host] < t, (host, "terminated without a drain first")

    # The records: only the players' own leaving, and no session on a host when it was drained.
    ended = read_jsonl(records)
    assert len(ended) == planned and {r["end_reason"] for r in ended} == {"player_left"}, ended
    for r in ended:
        if r["host_id"] in drained_at:
            t = drained_at[r["host_id"]]
            assert not r["created_at"] <= t <= r["ended_at"], (r, "was playing on a host as it was drained")
            assert r["created_at"] < t, (r, "was placed on a drained host")
    # The scale-in happened under load, not only once everyone had gone: some host was drained
    # while a player was still playing elsewhere (so the checks above are not empty).
    assert any(r["created_at"] < t < r["ended_at"] for t in drained_at.values() for r in ended), (drained_at, ended)
