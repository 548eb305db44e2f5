"""The Redis-distance benchmark at toy scale: every record and round trip is answered in
every mode, through the delay proxy, and a round trip through it takes at least the two
delays it adds (a lower bound the proxy must honour, not a speed). How fast either mode
is belongs in docs/benchmarks.md, never here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench_redis_distance import main
from tests.conftest import require_binary

DELAY_MS = 5.0


def test_bench_redis_distance_answers_everything_through_the_proxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_binary("redis-server")
    out = tmp_path / "bench.json"
    rc = main([
        "--delays-ms", f"direct,0,{DELAY_MS}", "--rate", "500", "--concurrency", "4", "--seconds", "0.4",
        "--repeat", "2", "--json", str(out),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    for results in report["rounds"]:
        assert set(results) == {
            f"{part}/{delay}/{mode}"
            for delay in ("direct", 0.0, DELAY_MS)
            for part, modes in (("writer", ("pipe", "one-at-a-time")), ("store", ("pipe", "redis-py")))
            for mode in modes
        }
        for key, phase in results.items():
            if key.startswith("writer/"):
                assert phase["records"] > 0 and phase["answered"] == phase["records"], key
            else:
                assert phase["round_trips"] > 0 and phase["client_cpu_us"] > 0, key
            assert 0 < phase["p50_ms"] <= phase["p99_ms"], key
            if f"/{DELAY_MS}/" in key:
                assert phase["p50_ms"] >= 2 * DELAY_MS, key  # there and back through the proxy
    assert "writer/5.0/one-at-a-time" in capsys.readouterr().out
