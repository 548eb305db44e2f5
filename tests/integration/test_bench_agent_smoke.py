"""The GPU agent benchmark runs end to end (tiny sizes; its figures are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bench_agent_smoke(tmp_path: Path) -> None:
    out = tmp_path / "agent.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench_agent",
            "--slots",
            "1",
            "--seconds",
            "1",
            "--iterations",
            "5",
            "--repeats",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["slots"] == 1 and report["gpus"] == 4 and report["ready_slots"] == 1
    assert report["steady"]["heartbeats"] >= 0 and "steady state" in proc.stdout
