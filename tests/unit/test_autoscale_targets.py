"""A regression guard on issue 15's savings targets, through the simulator's engine (the real
forecast and ``Scaler``): on two-day versions of the three generated traces, ours uses at
least 40 % fewer idle GPU-hours than the static peak pool and at least 20 % fewer than
reactive target tracking, its p95 wait is no worse than reactive's, and under 5 % of its
sessions wait for a cold start. The week-long figures in docs/benchmarks.md come from
``pixelfleet simulate``; this keeps a change to the forecast or policy from quietly losing
them. Seeded: the same numbers every run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autoscale.simulate.compare import simulate
from autoscale.simulate.config import SimConfig
from autoscale.simulate.traces import Trace, diurnal_week, scheduled_event, spike


@pytest.mark.parametrize("generate", [diurnal_week, spike, scheduled_event], ids=["diurnal", "spike", "event"])
def test_ours_meets_the_savings_targets(generate: Callable[..., Trace]) -> None:
    trace = generate(days=2, peak=200.0)
    results = {r.sizer: r for r in simulate(SimConfig(), trace)}
    static, reactive, ours = results["static"], results["reactive"], results["forecast"]
    assert ours.sessions == static.sessions == reactive.sessions > 1000
    assert ours.idle_gpu_hours <= 0.6 * static.idle_gpu_hours, (ours.idle_gpu_hours, static.idle_gpu_hours)
    assert ours.idle_gpu_hours <= 0.8 * reactive.idle_gpu_hours, (ours.idle_gpu_hours, reactive.idle_gpu_hours)
    assert ours.wait_p95_s <= reactive.wait_p95_s
    assert ours.cold_start_share < 0.05
    assert ours.sessions_cut == 0 or ours.spot_interruptions > 0  # only a reclaim cuts a session
