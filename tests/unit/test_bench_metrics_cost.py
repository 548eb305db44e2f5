"""The metrics-cost benchmark compares like with like: both cores relay every message,
only the shipped one counts them; the Redis timer it measures is the one that counts."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.bench_metrics_cost import core_without_counting, main, redis_calls, relay_pair
from signaling.protocol import Role, SignalingCore


def test_the_uncounted_core_relays_the_same_and_counts_nothing() -> None:
    counted, run_counted = relay_pair(SignalingCore)
    uncounted, run_uncounted = relay_pair(core_without_counting())
    assert run_counted(10) == run_uncounted(10) == 10
    assert counted.accepted[Role.PLAYER]["iceCandidate"] == 5
    assert counted.accepted[Role.STREAMER]["iceCandidate"] == 5
    assert uncounted.accepted[Role.PLAYER]["iceCandidate"] == 0
    assert uncounted.accepted[Role.STREAMER]["iceCandidate"] == 0


def test_a_short_run_writes_every_figure(tmp_path: Path) -> None:
    redis_calls(True)(3)  # the timed stand-in client runs
    out = tmp_path / "cost.json"
    assert main(["--messages", "200", "--rounds", "2", "--repeat", "1", "--redis-calls", "50", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    for part in ("relay", "redis"):
        assert len(report[part]["ratios"]) == 2
        assert all(r > 0 for r in report[part]["ratios"])
        assert report[part]["median_on_ns"] > 0 and report[part]["median_off_ns"] > 0
