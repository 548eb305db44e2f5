"""The cluster benchmark at toy scale: every set-up produces every figure, and messages
cross nodes only where the placement says so. How fast anything is belongs in
docs/benchmarks.md, never here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench_cluster import TARGETS, main, median, placement
from tests.conftest import require_binary

S, P, LIGHT = 3, 9, 3


def test_generators_are_placed_so_two_of_three_cross_nodes() -> None:
    assert [placement(g, 3) for g in range(3)] == [(0, 0), (1, 2), (2, 1)]
    assert {placement(g, 1) for g in range(3)} == {(0, 0)}


def test_rounds_fold_into_field_by_field_medians() -> None:
    rounds = [
        {"a": {"x": 1.0, "n": None, "k": "s"}},
        {"a": {"x": 3.0, "n": 2.0, "k": "s"}},
        {"a": {"x": 2.0, "n": 1.0, "k": "s"}},
    ]
    assert median(rounds) == {"a": {"x": 2.0, "n": None, "k": "s"}}


def test_bench_cluster_reports_every_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("redis-server")
    out = tmp_path / "bench.json"
    rc = main([
        "--streamers", str(S), "--players", str(P), "--inflight", "3", "--light", str(LIGHT), "--relay-seconds", "0.5",
        "--relay-warmup", "0.1", "--json", str(out),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert list(report["setups"]) == ["bare", "memory1", "redis1", "redis3"]
    for name, r in report["setups"].items():
        hs, relay = r["handshake"], r["relay"]
        assert (hs["ok"], hs["failed"]) == (P, 0), name  # the light phase's players are its own
        assert r["handshake_light"]["ok"] == LIGHT, name
        assert 0 < hs["p50_ms"] <= hs["p99_ms"], name
        assert relay["relayed"] > 0 and relay["node_cpu_per_100k"] > 0, name
        assert r["client_errors"] == 0 and r["closed_by_server"] == 0, name
        assert (relay["redis_cpu_per_100k"] is not None) == (r["broker"] == "redis"), name
        crossed = relay["crossed_share"]
        assert (crossed > 0) if name == "redis3" else (crossed == 0), name
        assert (hs["cross_node_p99_ms"] is not None) == (name == "redis3"), name
        assert (r["handshake_light"]["cross_node_p99_ms"] is not None) == (name == "redis3"), name
        waits = hs["run_queue"]  # Linux keeps schedstat on every kernel this runs on
        assert waits["nodes_ms_per_turn"] >= 0 and waits["generators_ms_per_turn"] >= 0, name
        assert ("redis_ms_per_turn" in waits) == (r["broker"] == "redis"), name
    assert set(TARGETS) <= {k for k, v in report["ratios"].items() if v is not None}
    printed = capsys.readouterr().out
    for what, _, _ in TARGETS.values():
        assert what in printed
