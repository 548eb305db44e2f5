"""Forecast and policy on constructed demand: a step, a spike, a clean daily cycle, a
scheduled event; bounds, cool-down, never scaling in under load, drain before terminate."""

from __future__ import annotations

import math

import pytest

from autoscale.forecast import DAY_S, DemandForecaster, ForecastSettings, ScheduledEvent, quantile_of
from autoscale.policy import (
    ForecastSizer,
    HostView,
    PoolPolicy,
    PoolView,
    Scaler,
    StaticSizer,
    TargetTrackingSizer,
)

PERIOD = 60.0


class Pool:
    """A pool whose hosts boot instantly and whose busy slots follow the demand exactly:
    enough to watch what the scaler asks for, step by step."""

    def __init__(self, scaler: Scaler, hosts: int = 1) -> None:
        self.scaler = scaler
        self.hosts: dict[str, HostView] = {}
        self.n = 0
        for _ in range(hosts):
            self._add()

    def _add(self) -> None:
        self.n += 1
        self.hosts[f"h{self.n}"] = HostView(host_id=f"h{self.n}", state="ready", slots=1, busy=0)

    def step(self, t: float, demand: int) -> tuple[int, list[str]]:
        # Fill in-service hosts in order with `demand` sessions; the rest queue.
        left = demand
        for hid, h in self.hosts.items():
            busy = 1 if left > 0 and h.state != "draining" else (h.busy if h.state == "draining" else 0)
            if h.state != "draining" and left > 0:
                left -= 1
            self.hosts[hid] = HostView(host_id=hid, state=h.state, slots=1, busy=busy)
        d = self.scaler.decide(PoolView(now=t, hosts=list(self.hosts.values()), queued=max(0, left)))
        for _ in range(d.launch):
            self._add()
        for hid in d.drain:
            assert self.hosts[hid].busy == 0, "drained a host with a session"
            self.hosts[hid] = HostView(host_id=hid, state="draining", slots=1, busy=0)
        for hid in d.terminate:
            assert self.hosts[hid].state == "draining" and self.hosts[hid].busy == 0
            del self.hosts[hid]
        return sum(1 for h in self.hosts.values() if h.state != "draining"), d.terminate


def ours(policy: PoolPolicy, **settings: float) -> Scaler:
    return Scaler(policy, ForecastSizer(DemandForecaster(ForecastSettings(**settings))))  # type: ignore[arg-type]


def test_quantile_interpolates() -> None:
    assert quantile_of([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile_of([5.0], 0.9) == 5.0


def test_step_up_reacts_within_two_periods() -> None:
    pool = Pool(ours(PoolPolicy(min_hosts=1, max_hosts=200, lead_time_s=300)))
    for i in range(30):
        pool.step(i * PERIOD, 10)
    hosts_after = [pool.step((30 + i) * PERIOD, 60)[0] for i in range(2)]
    assert hosts_after[0] >= 60  # at least the demand at the first look: never sized below it
    assert hosts_after[1] >= 60


def test_never_scales_in_under_load_and_respects_bounds() -> None:
    policy = PoolPolicy(min_hosts=3, max_hosts=40, scale_in_cooldown_s=300)
    pool = Pool(ours(policy), hosts=3)
    seen = []
    for i in range(120):
        demand = 100 if 20 <= i < 60 else 2  # asks for more than max_hosts
        n, _ = pool.step(i * PERIOD, demand)
        seen.append(n)
        assert policy.min_hosts <= n <= policy.max_hosts
    assert max(seen) == policy.max_hosts
    assert seen[-1] < policy.max_hosts  # came back down once idle


def test_scale_in_waits_for_cooldown_then_drains_before_terminating() -> None:
    policy = PoolPolicy(min_hosts=1, max_hosts=50, scale_in_cooldown_s=600)
    scaler = Scaler(policy, TargetTrackingSizer())
    hosts = [HostView(host_id=f"h{i}", state="ready", slots=1, busy=1 if i < 2 else 0) for i in range(10)]
    first = scaler.decide(PoolView(now=0.0, hosts=hosts))
    assert first.drain == [] and first.reason.startswith("cooldown")
    later = scaler.decide(PoolView(now=600.0, hosts=hosts))
    assert later.reason == "scale_in"
    assert set(later.drain) <= {f"h{i}" for i in range(2, 10)}  # never a busy host
    assert later.terminate == []  # terminated only on a later decision, once seen empty
    drained = [
        HostView(host_id=h.host_id, state="draining" if h.host_id in later.drain else h.state, slots=1, busy=h.busy)
        for h in hosts
    ]
    assert sorted(scaler.decide(PoolView(now=660.0, hosts=drained)).terminate) == sorted(later.drain)


def test_busy_draining_host_is_not_terminated() -> None:
    scaler = Scaler(PoolPolicy(min_hosts=0), StaticSizer(0))
    d = scaler.decide(PoolView(now=0.0, hosts=[HostView(host_id="a", state="draining", slots=2, busy=1)]))
    assert d.terminate == []


def test_spike_pool_follows_and_returns() -> None:
    pool = Pool(ours(PoolPolicy(min_hosts=1, max_hosts=500, scale_in_cooldown_s=300)))
    counts = []
    for i in range(180):
        demand = 200 if 60 <= i < 70 else 20
        counts.append(pool.step(i * PERIOD, demand)[0])
    assert max(counts[60:62]) >= 200
    assert counts[-1] < 60  # back near the base after the spike


def daily(t: float) -> float:
    return 50 + 40 * math.sin(2 * math.pi * t / DAY_S)


def test_daily_cycle_forecast_leads_the_rise() -> None:
    """With two days of history, the forecast at a rising hour covers the demand one lead
    time later, which the demand now alone would not."""
    f = DemandForecaster(ForecastSettings(quantile=0.9))
    lead = 1800.0
    t = 0.0
    while t < 2 * DAY_S:
        f.observe(t, daily(t))
        t += PERIOD
    now = 2 * DAY_S + 0.05 * DAY_S  # early on the steepest rise of the day
    f.observe(now, daily(now))
    fc = f.forecast(now, lead)
    assert fc.seasonal_days == 2 and fc.seasonal is not None
    assert fc.value >= daily(now + lead)
    assert fc.seasonal > daily(now) + 5


def test_scheduled_event_prewarms_before_start() -> None:
    start = 12_000.0
    event = ScheduledEvent(name="launch", start=start, end=start + 3600, players=300, ramp_s=0)
    policy = PoolPolicy(min_hosts=1, max_hosts=1000, lead_time_s=420)
    scaler = Scaler(policy, ForecastSizer(DemandForecaster(events=(event,))))
    pool = Pool(scaler, hosts=5)
    counts = {}
    t = 0.0
    while t <= start:
        counts[t] = pool.step(t, 5)[0]
        t += PERIOD
    assert counts[start - 1200] < 50  # not yet
    assert counts[start - 360] >= 300  # pre-warmed one lead time before the start


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PoolPolicy(min_hosts=5, max_hosts=2)
    with pytest.raises(ValueError):
        ForecastSettings(quantile=1.5)
    with pytest.raises(ValueError):
        ScheduledEvent(start=10, end=5, players=1)


def test_history_is_bounded_on_a_real_clock() -> None:
    """Unix-time observations (as the live controller makes) keep a bounded history."""
    f = DemandForecaster(ForecastSettings(bucket_s=60.0, history_days=1))
    t0 = 1_800_000_000.0
    for i in range(4000):
        f.observe(t0 + i * 60.0, 5.0)
    assert len(f._buckets) <= 2 * 24 * 60 + 1
    f.observe(t0 + 30 * DAY_S, 1.0)  # after a long gap: only the new bucket is left
    assert len(f._buckets) == 1


def test_forecast_leads_a_rising_demand_beyond_the_slots_in_use() -> None:
    """Not the ``busy`` floor: on a steady climb the pool is sized for where demand will be
    a lead time ahead (trend x lead time), ahead of what is in use now."""
    policy = PoolPolicy(min_hosts=1, max_hosts=500, lead_time_s=300, margin_slots=0, margin_ratio=0)
    pool = Pool(ours(policy, recent_window_s=600, history_days=0))
    for i in range(20):  # +2 players a minute: +10 over the 5-minute lead time
        hosts, _ = pool.step(i * PERIOD, 2 * i)
    demand = 2 * 19
    assert hosts >= demand + 8  # the trend carried over the lead time, not just the 38 in use
    assert pool.scaler.sizer.forecaster.forecast(19 * PERIOD, 300).recent > demand + 8  # type: ignore[attr-defined]
