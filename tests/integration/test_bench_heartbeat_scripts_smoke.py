"""The heartbeat-script benchmark at toy scale: both phases report every script's time.
How fast anything is belongs in docs/benchmarks.md, never here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench_heartbeat_scripts import main
from tests.conftest import require_binary

pytestmark = pytest.mark.integration


def test_bench_heartbeat_scripts_reports_each_script(tmp_path: Path) -> None:
    require_binary("redis-server")
    out = tmp_path / "hb.json"
    assert main(["--hosts", "2", "--slots", "8", "--gpus", "2", "--beats", "20", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [p["gpu_reports"] for p in report["phases"]] == [False, True]
    for phase in report["phases"]:
        calls = phase["us_per_call"]
        assert calls["heartbeat_host"] > 0 and calls["heartbeat_slots"] > 0, phase
        assert phase["redis_us_per_beat"] >= phase["us_per_beat"]["heartbeat_host"] > 0, phase
        assert set(phase["copy_read_us"]) == {"hget", "copy_flags", "decode"}, phase
        assert min(phase["copy_read_us"].values()) > 0, phase
    assert "zadd" in report["phases"][1]["us_per_call"]  # GPU reports move the placement scores
