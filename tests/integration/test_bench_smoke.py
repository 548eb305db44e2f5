"""The signalling benchmark, run at toy scale against both servers.

It checks that every figure of the report is produced (handshakes, latency
percentiles, relay rate, CPU per message, RSS per idle connection, saturation,
ratios), never how fast anything is: timings belong in docs/benchmarks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench_signaling import TARGETS, main

pytestmark = pytest.mark.integration

S, P, IDLE = 2, 4, (10, 20)


def test_bench_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    rc = main([
        "--streamers", str(S), "--players", str(P), "--inflight", "2", "--relay-seconds", "1",
        "--relay-warmup", "0.2", "--windows", "2", "--idle", ",".join(map(str, IDLE)), "--generators", "2",
        "--settle", "0.2", "--quiet-wait", "0", "--json", str(out),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["servers"]) == {"pixelfleet", "bare"}
    for kind, r in report["servers"].items():
        assert r["streamers"] == S, kind
        hs = r["handshake"]
        assert (hs["ok"], hs["failed"]) == (P, 0), (kind, hs["failures"])
        assert hs["per_s"] > 0
        assert 0 < hs["p50_ms"] <= hs["p95_ms"] <= hs["p99_ms"] <= hs["max_ms"]
        relay = r["relay"]
        assert relay["pairs"] == P and relay["relayed"] > 0 and relay["per_s"] > 0
        assert [w["per_s"] > 0 for w in relay["per_window"]] == [True, True]
        assert relay["lost"] == 0
        assert relay["rtt_p50_ms"] is not None and relay["rtt_p99_ms"] is not None
        assert relay["server_cpu_per_100k"] > 0 and relay["gen_cpu_per_100k"] > 0
        for phase in (hs, relay):
            assert phase["cpu"]["server_cores"] >= 0 and phase["cpu"]["gen_cores"] >= 0  # 10 ms ticks
            assert phase["saturated"]
        idle = r["idle"]
        assert set(idle["rss_bytes"]) == {"0", *map(str, IDLE)}
        assert all(v > 0 for v in idle["rss_bytes"].values())
        assert idle["failed"] == 0
        assert idle["kb_per_idle"] is not None and idle["kb_per_idle_marginal"] is not None
        assert r["client_errors"] == 0 and r["closed_by_server"] == 0
    ratios = report["ratios"]
    assert len(ratios["relay_ratio_windows"]) == len(ratios["cpu_ratio_windows"]) == 2
    for key in TARGETS:
        assert ratios[key] is not None, key
        assert ratios["met"][key] in (True, False)
    text = capsys.readouterr().out
    for label in ("handshakes/s", "handshake latency p99", "relayed msgs/s", "server CPU s / 100k relayed",
                  "RSS per idle conn", "saturated", "targets:"):  # fmt: skip
        assert label in text, label
