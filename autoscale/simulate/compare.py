"""The three pools side by side on one trace: a static pool sized for the peak, reactive
target tracking, and ours (forecast), each through the same ``Scaler`` and simulator."""

from __future__ import annotations

import heapq
import math

import msgspec

from autoscale.forecast import DemandForecaster
from autoscale.policy import ForecastSizer, Scaler, Sizer, StaticSizer, TargetTrackingSizer
from autoscale.simulate.config import SimConfig
from autoscale.simulate.engine import Result, Simulation
from autoscale.simulate.traces import Trace

SIZERS = ("static", "reactive", "forecast")


def peak_players(trace: Trace) -> int:
    """The most players playing at once if nobody ever waited (the offered load's peak)."""
    ends: list[float] = []
    peak = 0
    for arrival, length in zip(trace.arrivals, trace.sessions, strict=True):
        while ends and ends[0] <= arrival:
            heapq.heappop(ends)
        heapq.heappush(ends, arrival + length)
        peak = max(peak, len(ends))
    return peak


def make_sizer(name: str, config: SimConfig, trace: Trace) -> tuple[Sizer, SimConfig]:
    policy = config.policy
    if name == "static":
        hosts = max(policy.min_hosts, math.ceil(peak_players(trace) / policy.slots_per_host))
        # A fixed pool: every host On-Demand (the base), no scaling either way.
        fixed = msgspec.structs.replace(policy, min_hosts=hosts, max_hosts=hosts)
        return StaticSizer(hosts), msgspec.structs.replace(config, policy=fixed, on_demand_base=hosts)
    if name == "reactive":
        return TargetTrackingSizer(), config
    if name == "forecast":
        return ForecastSizer(DemandForecaster(config.forecast, tuple(trace.events))), config
    raise ValueError(f"unknown sizer {name!r}; choose from {', '.join(SIZERS)}")


def simulate(config: SimConfig, trace: Trace, sizers: tuple[str, ...] = SIZERS) -> list[Result]:
    results = []
    for name in sizers:
        sizer, cfg = make_sizer(name, config, trace)
        results.append(Simulation(cfg, trace, Scaler(cfg.policy, sizer)).run())
    return results
