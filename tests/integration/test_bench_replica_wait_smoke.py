"""The replica-wait benchmark at toy scale: both modes claim every slot and report their
figures. How fast anything is belongs in docs/benchmarks.md, never here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench_replica_wait import MODES, main
from tests.conftest import require_binary

pytestmark = pytest.mark.integration


def test_bench_replica_wait_reports_both_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("redis-server")
    out = tmp_path / "wait.json"
    argv = ["--claims", "40", "--concurrency", "1,4", "--repeat", "2", "--replica-delay-ms", "0.2"]
    assert main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["replica_delay_ms"] == 0.2
    assert len(report["runs"]) == 2 * 2 * len(MODES)
    for run in report["runs"]:
        assert run["per_s"] > 0 and run["p99_ms"] >= run["p50_ms"] > 0 and run["redis_cpu_us_per_alloc"] >= 0, run
        assert run["heartbeats_per_s"] > 0, run  # the pool's host beat during the claims
    assert [m["concurrency"] for m in report["medians"]] == [1, 4]
    assert all(m["ratio"] > 0 and set(MODES) <= set(m) for m in report["medians"])
    printed = capsys.readouterr().out
    assert "concurrency 1 (medians)" in printed and "concurrency 4 (medians)" in printed
