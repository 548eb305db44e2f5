"""The signalling and matchmaker benchmarks run as load-test scenarios, at toy scale:
``pixelfleet loadtest run`` writes the report with the benchmark's figures and an HTML
page, and ``pixelfleet loadtest compare`` checks two such reports. Never how fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.engine import main
from tests.conftest import require_binary

pytestmark = pytest.mark.integration

SIGNALING = """
name = "toy-signaling"
target = "benchmark"
[benchmark]
kind = "signaling"
timeout_s = 600
[benchmark.options]
streamers = 2
players = 4
inflight = 2
relay_seconds = 1
relay_warmup = 0.2
windows = 2
idle = [10, 20]
generators = 2
settle = 0.2
quiet_wait = 0
"""

MATCHMAKER = """
name = "toy-matchmaker"
target = "benchmark"
[benchmark]
kind = "matchmaker"
timeout_s = 600
[benchmark.options]
fleet = "none"
replicas = [1, 2]
allocs = 60
warmup = 10
conns_per_replica = 2
fixed_rate = 40
fixed_seconds = 1
fixed_replicas = 2
fixed_conns = 8
raw_claims = 200
raw_batch = 16
raw_store_claims = 60
raw_store_procs = 1
raw_store_concurrency = 4
slots_per_app = 16
quiet_wait = 0
"""


def run(tmp_path: Path, name: str, text: str) -> dict[str, object]:
    scenario = tmp_path / f"{name}.toml"
    scenario.write_text(text)
    out, page = tmp_path / f"{name}.json", tmp_path / f"{name}.html"
    assert main(["run", str(scenario), "--json", str(out), "--html", str(page)]) == 0
    report: dict[str, object] = json.loads(out.read_text())
    assert "<h2>Figures</h2>" in page.read_text()
    return report


def test_the_signalling_benchmark_as_a_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = run(tmp_path, "sig", SIGNALING)
    assert report["target"] == {"kind": "benchmark", "benchmark": "signaling"}
    figures = report["figures"]
    assert isinstance(figures, dict)
    for server in ("pixelfleet", "bare"):
        assert figures[f"{server}: relayed msgs/s"]["value"] > 0
        assert figures[f"{server}: handshake p99 ms"]["lower_is_better"] is True
    assert isinstance(report["benchmark"], dict) and set(report["benchmark"]["servers"]) == {"pixelfleet", "bare"}
    assert "pixelfleet: relayed msgs/s" in capsys.readouterr().out
    # the same report against itself: every ratio 1, no regression
    path = str(tmp_path / "sig.json")
    assert main(["compare", path, path, "--max-ratio", "1.01"]) == 0
    # a slower copy is caught
    slower = json.loads((tmp_path / "sig.json").read_text())
    slower["figures"]["pixelfleet: relayed msgs/s"]["value"] /= 2
    (tmp_path / "slower.json").write_text(json.dumps(slower))
    assert main(["compare", path, str(tmp_path / "slower.json"), "--max-ratio", "1.5"]) == 1


def test_the_matchmaker_benchmark_as_a_scenario(tmp_path: Path) -> None:
    require_binary("redis-server")
    report = run(tmp_path, "mm", MATCHMAKER)
    figures = report["figures"]
    assert isinstance(figures, dict)
    assert figures["raw script: allocations/s"]["value"] > 0
    assert figures["http closed x2: allocations/s"]["value"] > 0
    assert figures["ceiling ratio (closed loop, most replicas)"]["value"] > 0


def test_a_bad_option_stops_before_anything_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(SIGNALING.replace("relay_seconds = 1", "relay_secs = 1"))
    assert main(["run", str(scenario)]) == 2
    assert "relay-secs" in capsys.readouterr().err
