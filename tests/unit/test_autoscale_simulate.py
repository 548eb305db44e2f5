"""The simulator: accounting on small hand-made traces, the generators, the CSV loader, the
command's outputs."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from autoscale.forecast import DAY_S
from autoscale.policy import PoolPolicy
from autoscale.simulate.cli import main
from autoscale.simulate.compare import peak_players, simulate
from autoscale.simulate.config import Dist, SimConfig, load_config
from autoscale.simulate.traces import Trace, diurnal_players, diurnal_week, load_csv, scheduled_event, spike

FIXED = SimConfig(
    boot_s=Dist(kind="fixed", a=100.0),
    cold_start_s=Dist(kind="fixed", a=200.0),
    spot=False,
    policy=PoolPolicy(min_hosts=1, max_hosts=50, scale_in_cooldown_s=120),
)


def test_static_pool_bills_every_host_for_the_whole_trace() -> None:
    trace = Trace(name="t", duration_s=3600.0, arrivals=[1000.0, 1000.0, 1500.0], sessions=[600.0, 600.0, 600.0])
    assert peak_players(trace) == 3
    (static,) = simulate(FIXED, trace, ("static",))
    assert static.gpu_hours == pytest.approx(3.0)
    assert static.busy_gpu_hours == pytest.approx(1800.0 / 3600.0)
    assert static.idle_gpu_hours == pytest.approx(2.5)
    assert static.wait_p99_s == 0.0  # ready at 300 s, long before the first player
    assert static.cost == pytest.approx(3.0 * FIXED.price.on_demand_per_h)


def test_a_player_before_any_capacity_waits_for_a_cold_start() -> None:
    trace = Trace(name="t", duration_s=7200.0, arrivals=[10.0] * 3 + [4000.0], sessions=[300.0] * 4)
    (reactive,) = simulate(FIXED, trace, ("reactive",))
    assert reactive.cold_start_share == pytest.approx(0.75)  # the first three wait for boot + cold start
    assert reactive.wait_p99_s == pytest.approx(300.0 - 10.0, abs=61.0)  # boot + cold - arrival (+ one period)


def test_no_session_is_cut_without_spot() -> None:
    trace = spike(days=1, peak=40, at_s=10 * 3600.0, extra=60)
    results = simulate(FIXED, trace)
    for r in results:
        assert r.sessions_cut == 0 and r.spot_interruptions == 0
        assert r.sessions == len(trace.arrivals)
        assert 0 <= r.idle_gpu_hours <= r.gpu_hours


def test_spot_interruptions_are_counted() -> None:
    config = msgspec.structs.replace(FIXED, spot=True, spot_interruptions_per_h=0.5, spot_refused=0.0)
    (r,) = simulate(config, diurnal_week(days=1, peak=40), ("reactive",))
    assert r.spot_interruptions > 0
    assert r.spot_absorbed + min(r.sessions_cut, r.spot_interruptions) >= r.spot_interruptions


def test_generators_follow_their_shape() -> None:
    week = diurnal_week(days=7, peak=100, trough=10)
    assert week.arrivals == sorted(week.arrivals) and week.duration_s == 7 * DAY_S
    assert diurnal_players(20 * 3600.0, 100, 10) == pytest.approx(100)
    assert diurnal_players(8 * 3600.0, 100, 10) == pytest.approx(10)
    event = scheduled_event(days=2, peak=50, start_s=DAY_S + 20 * 3600, players=100)
    assert len(event.events) == 1 and event.events[0].players == 100
    rush = [a for a in event.arrivals if event.events[0].start <= a < event.events[0].start + 600]
    assert len(rush) >= 100


def test_csv_loader(tmp_path: Path) -> None:
    good = tmp_path / "arrivals.csv"
    good.write_text("arrival,duration_s,app\n2026-01-01T10:00:30+00:00,60,a\n2026-01-01T10:00:00+00:00,120,a\n")
    trace = load_csv(str(good))
    assert trace.arrivals == [0.0, 30.0] and trace.sessions == [120.0, 60.0]
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival,duration_s\n10,abc\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        load_csv(str(bad))
    missing = tmp_path / "missing.csv"
    missing.write_text("when,how_long\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        load_csv(str(missing))


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    path.write_text('{"instance_type": "g6.xlarge", "policy": {"min_hosts": 4}}')
    config = load_config(str(path))
    assert config.policy.min_hosts == 4 and config.price.on_demand_per_h == 0.805
    path.write_text('{"instance_type": "p5.48xlarge"}')
    with pytest.raises(ValueError, match="no prices"):
        load_config(str(path))


def test_command_writes_table_html_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("arrival,duration_s\n" + "".join(f"{i * 30},{900}\n" for i in range(200)))
    html, js = tmp_path / "plot.html", tmp_path / "out.json"
    assert main(["--csv", str(csv), "--html", str(html), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| a | ours (forecast) |" in out and "fewer idle GPU-hours" in out
    assert "<svg" in html.read_text()
    rows = msgspec.json.decode(js.read_bytes())
    assert [r["sizer"] for r in rows] == ["static", "reactive", "forecast"]
    assert main(["--pools", "nope"]) == 2
