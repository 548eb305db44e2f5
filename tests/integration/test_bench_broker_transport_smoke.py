"""The broker-transport benchmark at toy scale: both transports deliver every record of
both phases, and the report carries every figure. How fast either is belongs in
docs/benchmarks.md, never here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.bench_broker_transport import TRANSPORTS, main
from tests.conftest import require_binary

LIGHT, MAXLEN = 20, 50


def test_bench_broker_transport_reports_both_transports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_binary("redis-server")
    out = tmp_path / "bench.json"
    rc = main([
        "--light", str(LIGHT), "--light-gap-ms", "0", "--seconds", "0.3", "--warmup", "0", "--window", "16",
        "--batch", "4", "--maxlen", str(MAXLEN), "--repeat", "2", "--json", str(out),
    ])  # fmt: skip
    assert rc == 0
    report = json.loads(out.read_text())
    assert tuple(report["transports"]) == TRANSPORTS
    for rounds in [report["rounds"][0], report["rounds"][1], report["transports"]]:
        for name in TRANSPORTS:
            light, loaded = rounds[name]["light"], rounds[name]["loaded"]
            assert light["sent"] == light["received"] == LIGHT, name
            assert light["records_per_batch"] == 1, name
            assert loaded["sent"] > 0 and loaded["received"] == loaded["sent"], name
            assert 1 <= loaded["records_per_batch"] <= 4, name
            for phase in (light, loaded):
                assert (phase["lost"], phase["missing"], phase["out_of_order"], phase["no_subscriber"]) == (0, 0, 0, 0)
                assert phase["p50_us"] is not None and 0 < phase["p50_us"] <= phase["p99_us"] <= phase["max_us"]
                assert set(phase["cpu_s_per_100k"]) == {"redis", "sender", "receiver"}
    inbox = report["transports"]["streams"]["inbox"]
    assert 0 < inbox["entries"] <= MAXLEN + 100  # MAXLEN ~ trims whole nodes of at most 100 entries
    assert inbox["bytes"] > 0
    assert "inbox" not in report["transports"]["pubsub"]  # pub/sub keeps nothing
    assert report["redis"]["pubsub_output_buffer_limit"]["hard_bytes"] >= 0
    printed = capsys.readouterr().out
    assert all(f"\n{name} " in printed for name in TRANSPORTS)
    assert "safe, pubsub:" in printed and "safe, streams:" in printed
