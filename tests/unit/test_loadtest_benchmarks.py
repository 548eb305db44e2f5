"""Component benchmarks as load-test scenarios: the file, the command line it becomes,
the figures lifted from a benchmark's report, and the comparison of two such reports."""

from __future__ import annotations

import pytest

from loadtest import benchmarks
from loadtest.compare import compare, regressions
from loadtest.scenario import ScenarioError, load, parse

BENCH = """
name = "b"
target = "benchmark"
[benchmark]
kind = "signaling"
[benchmark.options]
relay_seconds = 2
idle = [10, 20]
pin = false
"""


def test_a_benchmark_scenario_becomes_the_benchmarks_own_command_line() -> None:
    s = parse(BENCH)
    assert s.benchmark is not None and s.phases == []
    assert benchmarks.check(s.benchmark) == ["--relay-seconds", "2", "--idle", "10,20", "--no-pin"]


def test_an_option_the_benchmark_does_not_have_is_named() -> None:
    s = parse(BENCH.replace("relay_seconds = 2", "relay_secs = 2"))
    assert s.benchmark is not None
    with pytest.raises(ScenarioError, match="relay-secs"):
        benchmarks.check(s.benchmark, "f.toml")


def test_a_malformed_option_value_is_refused_before_anything_starts() -> None:
    s = parse(BENCH.replace("relay_seconds = 2", 'relay_seconds = "soon"'))
    assert s.benchmark is not None
    with pytest.raises(ScenarioError, match="relay-seconds"):
        benchmarks.check(s.benchmark)


def test_the_report_file_is_the_testers_own() -> None:
    s = parse(BENCH.replace("relay_seconds = 2", 'json = "x.json"'))
    assert s.benchmark is not None
    with pytest.raises(ScenarioError, match="json"):
        benchmarks.check(s.benchmark)


@pytest.mark.parametrize(
    "text",
    [
        BENCH.replace('target = "benchmark"', 'target = "signaling"'),  # a table without its target
        'name = "b"\ntarget = "benchmark"\n',  # the target without its table
        BENCH + '[[phases]]\nkind = "steady"\nduration_s = 1\nrate = 1\n',  # phases: the benchmark paces itself
    ],
)
def test_benchmark_and_target_go_together(text: str) -> None:
    with pytest.raises(ScenarioError):
        parse(text)


def test_the_shipped_benchmark_scenarios_parse_and_check() -> None:
    for name in ("bench-signaling", "bench-matchmaker"):
        s = load(f"loadtest/scenarios/{name}.toml")
        assert s.benchmark is not None
        benchmarks.check(s.benchmark, name)


def test_figures_of_the_matchmaker_benchmark_carry_their_direction() -> None:
    raw = {
        "phases": [
            {"phase": "raw script", "per_s": 3000.0, "cpu": {"cpu_ms_per_op": {"redis": 0.3}}},
            {"phase": "http closed", "replicas": 4, "per_s": 1200.0, "p99_ms": 80.0, "cpu": {}},
        ],
        "ratios": {"ceiling_ratio": 0.4, "fixed_p99_ms": None},
    }
    figures = benchmarks.FIGURES["matchmaker"](raw)
    assert figures["http closed x4: allocations/s"] == {"value": 1200.0, "lower_is_better": False}
    assert figures["http closed x4: p99 ms"] == {"value": 80.0, "lower_is_better": True}
    assert figures["raw script: redis CPU ms / allocation"]["lower_is_better"] is True
    assert figures["ceiling ratio (closed loop, most replicas)"]["value"] == 0.4
    assert "p99 ms at the fixed rate" not in figures  # not measured: left out, not zero


def test_two_benchmark_reports_compare_by_their_figures() -> None:
    base = {
        "figures": {
            "a/s": {"value": 100.0, "lower_is_better": False},
            "p99 ms": {"value": 10.0, "lower_is_better": True},
        }
    }
    new = {
        "figures": {
            "a/s": {"value": 50.0, "lower_is_better": False},
            "p99 ms": {"value": 11.0, "lower_is_better": True},
        }
    }
    rows = compare(base, new)
    assert [(r["figure"], r["ratio"]) for r in rows] == [("a/s", 0.5), ("p99 ms", 1.1)]
    assert regressions(rows, 1.2) == ["a/s: 100 -> 50 (x0.50)"]
