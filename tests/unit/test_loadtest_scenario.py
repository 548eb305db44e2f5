"""Scenario files, arrival schedules, the report's arithmetic and compare mode (pure)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loadtest import compare, report, scenario
from loadtest.observe import TargetRefused, is_loopback, require_loopback
from loadtest.scenario import ScenarioError, arrival_times, parse, plans, share

BASE = """
name = "t"
target = "signaling"
[[phases]]
kind = "steady"
duration_s = 10
rate = 3
"""


def test_every_shipped_scenario_loads() -> None:
    files = sorted((Path(scenario.__file__).parent / "scenarios").glob("*.toml"))
    assert files
    for f in files:
        s = scenario.load(f)
        assert s.phases or s.benchmark is not None, f


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ('kind = "steady"\nduration_s = 10\nrate = 3', 30),
        ('kind = "ramp"\nduration_s = 10\nfrom_rate = 0\nto_rate = 4', 20),
        ('kind = "spike"\nduration_s = 10\nrate = 1\npeak_rate = 11\nat_s = 2\nwidth_s = 1', 20),
        ('kind = "diurnal"\nduration_s = 20\nmin_rate = 0\nmax_rate = 2\nperiod_s = 20', 20),
    ],
)
def test_even_arrivals_follow_the_area_under_the_rate(phase: str, expected: int) -> None:
    s = parse(f'name = "x"\ntarget = "signaling"\n[[phases]]\n{phase}\n')
    times = arrival_times(s)
    assert abs(len(times) - expected) <= 1
    assert times == sorted(times) and 0 <= times[0] and times[-1] <= s.duration_s


def test_spike_arrivals_crowd_into_the_spike() -> None:
    s = parse(
        'name = "x"\ntarget = "signaling"\n[[phases]]\nkind = "spike"\nduration_s = 10\nrate = 1\npeak_rate = 11\nat_s = 2\nwidth_s = 1\n'
    )
    inside = [t for t in arrival_times(s) if 2 <= t < 3]
    assert len(inside) >= 10


def test_poisson_is_seeded_and_near_the_mean() -> None:
    text = BASE.replace('target = "signaling"', 'target = "signaling"\narrivals = "poisson"\nseed = 7').replace(
        "rate = 3", "rate = 50"
    )
    a, b = arrival_times(parse(text)), arrival_times(parse(text))
    assert a == b
    assert abs(len(a) - 500) < 5 * math.sqrt(500)


def test_counts_are_bounded_and_shares_cover_every_session() -> None:
    s = parse(BASE + "[limits]\nmax_sessions = 7\n[webrtc]\nsample = 2\n[abuse]\nfraction = 0.5\n")
    ps = plans(s)
    assert len(ps) == 7
    assert sum(p.kind == "webrtc" for p in ps) == 2
    assert {p.abuse for p in ps if p.kind == "abuse"} <= set(scenario.ABUSE_KINDS)
    parts = [share(ps, i, 3) for i in range(3)]
    assert sorted(p.k for part in parts for p in part) == list(range(7))
    assert plans(s) == ps  # the same file, the same sessions, in every worker


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("[session]\nlength_s = -1\n", "session.length_s"),
        ("[abuse]\nfraction = 2\n", "abuse.fraction"),
        ("[limits]\nmax_sessions = 0\n", "max_sessions"),
        ("bogus = 1\n", "unknown field"),
    ],
)
def test_bad_scenarios_say_what_is_wrong(extra: str, words: str) -> None:
    text = BASE.replace('name = "t"', 'name = "t"\n' + extra) if extra.startswith("bogus") else BASE + extra
    with pytest.raises(ScenarioError, match=words):
        parse(text)


def test_platform_scenarios_have_no_spectators() -> None:
    with pytest.raises(ScenarioError, match="spectators"):
        parse(BASE.replace('"signaling"', '"platform"') + "[session]\nspectators = 1\n")


def test_phases_over_a_day_are_refused() -> None:
    with pytest.raises(ScenarioError, match="ceiling"):
        parse(BASE.replace("duration_s = 10", "duration_s = 100000"))


def test_only_loopback_targets_without_the_flag() -> None:
    assert is_loopback("ws://127.0.0.1:80") and is_loopback("http://[::1]:9") and is_loopback("ws://localhost/")
    assert not is_loopback("ws://10.0.0.1:80") and not is_loopback("http://example.org")
    with pytest.raises(TargetRefused, match="i-own-this-target"):
        require_loopback(["ws://10.0.0.1:80"], i_own_it=False)
    require_loopback(["ws://10.0.0.1:80"], i_own_it=True)


def test_percentiles_slope_and_agreement() -> None:
    values = [float(v) for v in range(1, 101)]
    assert report.pcts(values)["p50"] == 50 and report.pcts(values)["p99"] == 99
    assert report.pcts([])["p50"] is None
    slope = report.slope_per_min([(t, 2.0 * t) for t in range(10)])
    assert slope == pytest.approx(120.0)
    assert report.agrees(100, 104) and not report.agrees(100, 120)


def test_compare_ratios_and_regressions() -> None:
    base = {"latency_ms": {"join": {"p95": 10.0}}, "sessions": {"ok_per_s": 4.0}}
    new = {"latency_ms": {"join": {"p95": 30.0}}, "sessions": {"ok_per_s": 4.0}}
    rows = {r["figure"]: r for r in compare.compare(base, new)}
    assert rows["join p95 ms"]["ratio"] == pytest.approx(3.0)
    assert rows["sessions ok/s"]["ratio"] == pytest.approx(1.0)
    assert rows["first frame p95 ms"]["ratio"] is None
    worse = compare.regressions(list(rows.values()), 1.5)
    assert len(worse) == 1 and worse[0].startswith("join p95 ms")
