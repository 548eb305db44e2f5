"""``pixelfleet simulate --csv ... --events FILE``: real arrivals with the launches an operator
announced, on the trace's own clock, told to our pool."""

from __future__ import annotations

import datetime
import json
import random
from pathlib import Path

import pytest

from autoscale.events import EventSpec
from autoscale.simulate.cli import main
from autoscale.simulate.compare import simulate
from autoscale.simulate.config import SimConfig
from autoscale.simulate.traces import load_csv, with_events

ORIGIN = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
LAUNCH = {"name": "launch", "start": "2026-03-01T20:00:00Z", "end": "2026-03-01T22:00:00Z", "players": 120, "ramp_s": 0}


def arrivals_csv(path: Path) -> Path:
    """A quiet afternoon (about 10 players at once) and a rush of 120 at 20:00, ISO times."""
    rng = random.Random(7)
    rows = []
    t = 0.0
    while t < 12 * 3600:
        t += rng.expovariate(10 / 1200)
        rows.append((t, 1200.0))
    rows += [(8 * 3600 + rng.uniform(0, 300), 3600.0) for _ in range(120)]
    lines = ["arrival,duration_s"]
    lines += [f"{(ORIGIN + datetime.timedelta(seconds=a)).isoformat()},{d}" for a, d in sorted(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_events_land_on_the_trace_clock(tmp_path: Path) -> None:
    trace = load_csv(str(arrivals_csv(tmp_path / "a.csv")))
    assert trace.origin is not None and abs(trace.origin - ORIGIN.timestamp()) < 600  # the first arrival
    (event,) = with_events(trace, [EventSpec(**LAUNCH)]).events  # type: ignore[arg-type]
    assert event.start == pytest.approx(ORIGIN.timestamp() + 8 * 3600 - trace.origin)
    assert event.end - event.start == 7200

    seconds = tmp_path / "s.csv"
    seconds.write_text("arrival,duration_s\n0,60\n30,60\n")
    plain = load_csv(str(seconds))
    assert plain.origin is None
    assert with_events(plain, [EventSpec(start=10, end=20, players=1)]).events[0].start == 10
    with pytest.raises(ValueError, match="need a trace whose arrivals are ISO 8601"):
        with_events(plain, [EventSpec(**LAUNCH)])  # type: ignore[arg-type]


def test_an_announced_rush_spares_our_players_the_cold_start(tmp_path: Path) -> None:
    trace = load_csv(str(arrivals_csv(tmp_path / "a.csv")))
    told = with_events(trace, [EventSpec(**LAUNCH)])  # type: ignore[arg-type]
    (blind,) = simulate(SimConfig(), trace, ("forecast",))
    (warned,) = simulate(SimConfig(), told, ("forecast",))
    assert blind.cold_start_share > 0.15  # the rush waited for hosts to boot (0.24 today)
    assert warned.cold_start_share < blind.cold_start_share / 3  # 0.03 today
    assert warned.wait_p95_s < blind.wait_p95_s


def test_command_takes_an_events_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = arrivals_csv(tmp_path / "a.csv")
    events = tmp_path / "events.json"
    events.write_text(json.dumps({"events": [LAUNCH]}))
    out = tmp_path / "r.json"
    assert main(["--csv", str(csv), "--events", str(events), "--pools", "forecast", "--json", str(out)]) == 0
    assert json.loads(out.read_text())
    assert main(["--trace", "spike", "--events", str(events)]) == 2
    events.write_text('[{"start": "2026-03-01T20:00:00", "end": 1, "players": 1}]')
    assert main(["--csv", str(csv), "--events", str(events)]) == 2
    assert "no UTC offset" in capsys.readouterr().err
