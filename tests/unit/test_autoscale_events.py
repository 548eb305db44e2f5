"""Scheduled events as an operator writes them: Unix seconds or ISO 8601, inline or in an
events file the running controller re-reads when it changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoscale.controller import Controller
from autoscale.events import EventsFile, EventSpec, decode_events, parse_time
from autoscale.forecast import DemandForecaster, ForecastSettings, ScheduledEvent
from autoscale.local_up import load_local_config
from autoscale.policy import ForecastSizer, PoolPolicy, Scaler, StaticSizer
from tests.unit.test_autoscale_controller import FakeMatchmaker, FakeProvider

T0 = 1_772_395_200.0  # 2026-03-01T20:00:00Z


def test_times_are_unix_seconds_or_iso_8601_with_an_offset() -> None:
    assert parse_time(T0, "start") == T0
    assert parse_time("2026-03-01T20:00:00Z", "start") == T0
    assert parse_time("2026-03-01T21:30:00+01:30", "start") == T0
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time("2026-03-01T20:00:00", "start")
    with pytest.raises(ValueError, match="neither Unix seconds nor an ISO 8601"):
        parse_time("tonight", "start")
    events = decode_events(
        b'{"events": [{"name": "launch", "start": "2026-03-01T20:00:00Z", "end": 1772406000, "players": 300}]}'
    )
    assert events == [ScheduledEvent(name="launch", start=T0, end=T0 + 10_800, players=300)]
    assert decode_events(b"[]") == []
    with pytest.raises(ValueError, match="end > start"):
        EventSpec(start="2026-03-01T20:00:00Z", end="2026-03-01T19:00:00Z", players=1)


def write(path: Path, events: object, mtime: float) -> None:
    """Write the file and set its modification time (explicit, so no test waits on a clock tick)."""
    path.write_text(json.dumps(events))
    os.utime(path, (mtime, mtime))


def test_events_file_is_reread_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    watched = EventsFile(path)
    assert watched.poll() == []  # no file yet: no events
    assert watched.poll() is None

    write(path, [{"name": "a", "start": T0, "end": T0 + 60, "players": 5}], 1000)
    assert [e.name for e in watched.poll() or []] == ["a"]
    assert watched.poll() is None  # unchanged

    write(path, [{"name": "b", "start": "2026-03-01T20:00:00Z", "end": T0 + 60, "players": 5}], 2000)
    assert [e.name for e in watched.poll() or []] == ["b"]

    path.write_text('[{"name": "c", "start": "soon"')  # half written / wrong: refused, logged
    os.utime(path, (3000, 3000))
    assert watched.poll() is None and watched.error is not None and "events.json" in watched.error

    path.unlink()
    assert watched.poll() == [] and watched.error is None


async def test_running_controller_picks_up_an_announced_event(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    mm = FakeMatchmaker()
    mm.register("i-1", 1)
    provider = FakeProvider(mm, ["i-1"])
    policy = PoolPolicy(min_hosts=1, max_hosts=50, lead_time_s=600, margin_slots=0, margin_ratio=0)
    inline = ScheduledEvent(name="inline", start=T0 + 86_400, end=T0 + 90_000, players=1)
    forecaster = DemandForecaster(ForecastSettings(history_days=0), (inline,))
    now = [T0 - 3600]
    c = Controller(mm, provider, Scaler(policy, ForecastSizer(forecaster)), events_file=str(path), clock=lambda: now[0])

    d = await c.step()
    assert d.forecast is not None and d.forecast.events == 0 and d.desired_hosts == 1

    # An operator announces 20 players at T0, while the controller runs.
    write(path, {"events": [{"name": "launch", "start": "2026-03-01T20:00:00Z", "end": T0 + 3600, "players": 20}]}, 1)
    now[0] = T0 - 300  # within the lead time
    d = await c.step()
    assert d.forecast is not None and d.forecast.events == 20 and d.desired_hosts >= 20
    assert [e.name for e in forecaster.events] == ["inline", "launch"]  # the inline one kept

    write(path, [], 2)  # called off
    now[0] = T0 - 240
    d = await c.step()
    assert d.forecast is not None and d.forecast.events == 0
    assert [e.name for e in forecaster.events] == ["inline"]


def test_events_file_needs_the_forecast_sizer(tmp_path: Path) -> None:
    mm = FakeMatchmaker()
    with pytest.raises(ValueError, match="forecast sizer"):
        Controller(mm, FakeProvider(mm, []), Scaler(PoolPolicy(), StaticSizer(1)), events_file=str(tmp_path / "e"))


def test_local_config_takes_iso_events_and_refuses_a_bad_events_file(tmp_path: Path) -> None:
    config = tmp_path / "autoscale.json"
    events = tmp_path / "events.json"
    config.write_text(
        json.dumps(
            {
                "events": [{"start": "2026-03-01T20:00:00Z", "end": "2026-03-01T21:00:00Z", "players": 3}],
                "events_file": str(events),
            }
        )
    )
    loaded = load_local_config(str(config))  # the events file may come later
    assert loaded.events[0].event().start == T0
    events.write_text('[{"start": "2026-03-01T20:00:00", "end": 1772398800, "players": 3}]')
    with pytest.raises(ValueError, match="events_file .*no UTC offset"):
        load_local_config(str(config))


def test_the_documented_events_file_decodes() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "autoscaling.md").read_text()
    example = doc.split("### Scheduled events", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert [e.name for e in decode_events(example.encode())] == ["season-3-launch", "tournament"]
