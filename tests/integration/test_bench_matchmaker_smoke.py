"""The matchmaker benchmark at toy scale: every figure of the report is produced.

Never how fast anything is (timings belong in docs/benchmarks.md): only that each phase
ran, allocated what it asked for, and reported throughput, latency, CPU per process,
saturation, and the ratios against the targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.bench_matchmaker import TARGETS, main
from tests.conftest import require_binary

pytestmark = pytest.mark.integration


SMALL = [
    "--replicas", "1,2", "--allocs", "60", "--warmup", "10", "--conns-per-replica", "2",
    "--fixed-rate", "40", "--fixed-seconds", "1", "--fixed-replicas", "2", "--fixed-conns", "8",
    "--raw-claims", "200", "--raw-batch", "16", "--raw-store-claims", "60", "--raw-store-procs", "1",
    "--raw-store-concurrency", "4", "--slots-per-app", "16", "--quiet-wait", "0",
]  # fmt: skip
FLEET = [
    "--fleet", "6x40", "--fleet-apps", "3", "--fleet-replicas", "2", "--heartbeat-period", "0.5",
    "--hb-seconds", "1", "--queue-slots", "1", "--queue-players", "3", "--session-mean", "0.5",
    "--reconnect-grace", "0.2", "--reset-s", "0.1", "--end-conns", "2",
]  # fmt: skip


def _phases(report: dict[str, Any], repeat: int) -> dict[tuple[str, int | None], dict[str, Any]]:
    assert report["machine"]["nproc"] and report["machine"]["cpu_model"] is not None
    phases = {(p["phase"], p.get("replicas")): p for p in report["phases"]}
    assert set(phases) == {
        ("raw script", None),
        ("raw store", None),
        ("http closed", 1),
        ("http closed", 2),
        ("http open", 2),
    }
    for key, p in phases.items():
        cpu = p["cpu"]
        assert p["per_s"] > 0 and p["wall_s"] > 0, key
        assert cpu["redis_cores"] >= 0 and cpu["generators_cores"] >= 0 and 0 <= cpu["machine_busy"] <= 1, key
        assert len(cpu["generator_cores"]) >= 1 and cpu["fleet_cores"] >= 0, key
        assert set(cpu["cpu_ms_per_op"]) == {"redis", "matchmakers", "generators"}, key
        assert p["saturated"], key
        assert p["cpu_speed_ms"] > 0, key
        assert len(p["runs"]) == repeat and sum(r["chosen"] for r in p["runs"]) == 1, key
    for name in ("raw script", "raw store"):
        p = phases[(name, None)]
        assert p["claimed"] == p["claims"] and p["refused"] == 0 and not p["errors"], p
    assert phases[("raw script", None)]["batch_latency"]["p99_ms"] is not None
    assert phases[("raw store", None)]["latency"]["p99_ms"] is not None
    for key in (("http closed", 1), ("http closed", 2), ("http open", 2)):
        p = phases[key]
        assert p["allocated"] == p["requests"] and "warning" not in p, p
        assert len(p["cpu"]["matchmaker_cores"]) == key[1]
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"] <= p["max_ms"], p
        assert p["redis_commands_per_alloc"] and p["live_sessions_end"] > 0
        assert p["redis_io_per_alloc"]["reads"] > 0 and p["redis_io_per_alloc"]["writes"] > 0, key
        waits = p["cpu"]["run_queue"]  # the bench started Redis, the replicas and generators itself
        for group in ("redis", "matchmakers", "generators"):
            assert waits[group]["ms_per_turn"] is not None and waits[group]["ms_per_turn"] >= 0, (key, waits)
            assert waits[group]["ms_per_op"] >= 0, (key, waits)
    fixed = phases[("http open", 2)]
    assert fixed["offered_per_s"] == 40 and fixed["service"]["p99_ms"] is not None
    assert fixed["max_backlog"] >= 0 and fixed["max_send_lag_ms"] >= 0
    ratios = report["ratios"]
    assert ratios["raw_ceiling_per_s"] > 0 and ratios["scaling_1_to_4"] is not None
    for target in TARGETS:
        assert ratios[target] is not None, target
        assert ratios["met"][target] in (True, False)
    return phases


def _printed(text: str, *labels: str) -> None:
    for label in (
        "allocs/s",
        "p99 ms",
        "CPU cores: redis",
        "raw claim ceiling",
        "saturated (http closed x2)",
        "open loop: offered",
        "redis per allocation",
        "waiting for a CPU (run queue): redis",
        "the VM just before: a fixed Python workload took",
        "redis socket reads / writes per allocation",
        "targets:",
        *labels,
    ):
        assert label in text, label


def test_bench_matchmaker_with_a_fleet_at_work_reports_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default shape, small: hosts heartbeating through the API, sessions ending and
    slots resetting, a queue served; CPU per heartbeat and per allocation apart."""
    require_binary("redis-server")
    out = tmp_path / "bench.json"
    assert main([*SMALL, *FLEET, "--repeat", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    phases = _phases(report, repeat=1)
    assert report["fleet"]["shape"] == "6x40" and report["fleet"]["heartbeats"] in ("full", "delta")
    for key, p in phases.items():
        fl = p["fleet"]
        assert fl["shape"] == "6x40" and fl["period_s"] == 0.5, key
        idle = fl["heartbeats_only"]
        assert idle["heartbeats"] > 0 and idle["heartbeats_failed"] == 0 and not idle["errors"], (key, idle)
        assert idle["slot_reports_per_beat"] is not None and idle["heartbeat_p99_ms"] is not None, key
        cost = fl["cost"]
        assert cost["per_heartbeat_ms"]["redis"] > 0, (key, cost)  # INFO cpu: microseconds
        assert cost["per_heartbeat_ms"]["matchmakers"] >= 0, (key, cost)  # psutil: 10 ms ticks
        for side in ("redis", "matchmakers"):
            assert cost["per_alloc_ms"][side] is not None, (key, cost)
        assert fl["window"]["heartbeats_failed"] == 0 and not fl["window"]["errors"], (key, fl["window"])
    # Raw phases place on the fleet's slots, with the deadline check of production.
    assert phases[("raw script", None)]["pool_slots"] == 6 * 40
    # Sessions end (events accepted; the closed phases may be over before the first is
    # due) and the agents reset their slots.
    for key in (("http closed", 1), ("http closed", 2), ("http open", 2)):
        assert set(phases[key]["ends"]) == {"sent", "requests", "statuses"}, key
    ends = phases[("http open", 2)]["ends"]
    assert ends["sent"] > 0 and ends["statuses"].get("200", 0) > 0, ends
    # Batched as signalling sends them (the default): never more requests than events, and
    # an outcome per event (but those of a batch still in flight at the phase's end).
    assert 0 < ends["requests"] <= ends["sent"] and 0 < sum(ends["statuses"].values()) <= ends["sent"], ends
    everything = [p["fleet"][w] for p in phases.values() for w in ("heartbeats_only", "window")]
    assert sum(w["resets"] for w in everything) > 0
    # The queue app's players wait in its queue: of 3 players on 1 slot, two poll their tickets
    # about once a second each. (Its asks and services come one per session, about every two
    # seconds, so a run's 1 s windows may hold none of them: CI saw that once.)
    assert sum(w["queue"]["polls"] for w in everything) > 0
    _printed(capsys.readouterr().out, "CPU ms per heartbeat", "heartbeats/s applied", "queue app:")


def test_bench_matchmaker_allocations_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--fleet none``: the allocation-only figures of before, every phase twice."""
    require_binary("redis-server")
    out = tmp_path / "bench.json"
    assert main([*SMALL, "--fleet", "none", "--repeat", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    phases = _phases(report, repeat=2)
    assert report["fleet"] is None and all("fleet" not in p for p in phases.values())
    _printed(capsys.readouterr().out, "pool:")


def test_bench_sweep_reads_the_same_sessions_both_ways(tmp_path: Path) -> None:
    """The sweep benchmark at toy scale: both reads see the sessions it made, and the
    deadline read finds exactly the ones made overdue."""
    from loadtest.bench_sweep import main as sweep_main

    require_binary("redis-server")
    out = tmp_path / "sweep.json"
    assert sweep_main(["--sessions", "60", "--due", "0,7", "--repeat", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["live"], r["due_made"], r["listed"], r["due"]) for r in rows] == [(60, 0, 60, 0), (60, 7, 60, 7)]
    assert all(r["sessions_ms"] > 0 and r["due_sessions_ms"] > 0 for r in rows)
