"""The forecaster's seasonal memory survives a controller restart (``history_file``): a
restarted controller forecasts from yesterday at once instead of only the recent trend."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec

from autoscale.controller import Controller
from autoscale.forecast import DAY_S, DemandForecaster, ForecastSettings, History
from autoscale.policy import ForecastSizer, PoolPolicy, Scaler
from tests.unit.test_autoscale_controller import FakeMatchmaker, FakeProvider

SETTINGS = ForecastSettings(bucket_s=300, recent_window_s=900, history_days=2)


def daily(t: float) -> float:
    """Players at once: 20 at 08:00, 120 at 20:00."""
    return 70 - 50 * math.cos(2 * math.pi * ((t % DAY_S) / DAY_S - 20 / 24 + 0.5))


def test_restored_history_gives_the_same_seasonal_forecast() -> None:
    lived = DemandForecaster(SETTINGS)
    for i in range(int(DAY_S // 60)):
        lived.observe(i * 60.0, daily(i * 60.0))
    restarted = DemandForecaster(SETTINGS)
    assert restarted.restore(msgspec.json.decode(msgspec.json.encode(lived.history()), type=History))
    fresh = DemandForecaster(SETTINGS)

    t = DAY_S + 17 * 3600  # the next day, 17:00: the evening rise is ahead
    for f in (lived, restarted, fresh):
        f.observe(t, daily(t))
    a, b, c = (f.forecast(t, 3600) for f in (lived, restarted, fresh))
    assert a.seasonal is not None and b.seasonal == a.seasonal and b.value == a.value
    assert c.seasonal is None and c.value < b.value  # without it: only the recent level

    other = DemandForecaster(ForecastSettings(bucket_s=60))
    assert not other.restore(lived.history())  # another resolution: not taken


async def test_controller_saves_history_and_a_new_one_loads_it(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    mm = FakeMatchmaker()
    mm.register("i-1", 1)
    now = [0.0]

    def controller() -> Controller:
        scaler = Scaler(PoolPolicy(min_hosts=1), ForecastSizer(DemandForecaster(SETTINGS)))
        return Controller(mm, FakeProvider(mm, ["i-1"]), scaler, history_file=str(path), clock=lambda: now[0])

    first = controller()
    for i in range(12):  # an hour, a step every 5 minutes
        now[0] = i * 300.0
        await first.step()
    await first.aclose()
    saved = msgspec.json.decode(path.read_bytes(), type=History)
    assert saved.bucket_s == 300 and [b for b, _ in saved.buckets] == list(range(12))

    second = controller()
    assert isinstance(second.scaler.sizer, ForecastSizer)
    assert second.scaler.sizer.forecaster.history() == saved

    path.write_text("{not json")  # damaged: logged, started without it
    third = controller()
    assert isinstance(third.scaler.sizer, ForecastSizer)
    assert third.scaler.sizer.forecaster.history().buckets == []
