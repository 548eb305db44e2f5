"""How many hosts a pool should have, and which to launch, drain and terminate.

A *sizer* says how many slots the pool needs now:

- ``ForecastSizer`` (ours): the forecast quantile over the lead time plus a safety margin;
- ``TargetTrackingSizer``: reactive, like an Auto Scaling target-tracking policy on the
  share of slots in use;
- ``StaticSizer``: a fixed pool.

``Scaler`` turns that into actions with the same safety rules for every sizer: within the
pool's min/max; scale out at once; scale in only after ``scale_in_cooldown_s`` of wanting
fewer, only hosts with no session, never below the slots in use; drain first and terminate
on a later decision, once the drained host is seen empty; a host booting longer than
``boot_timeout_s`` (never registered, or its agent gone) is terminated and replaced. Every
``Decision`` carries its
inputs, so the log explains each step. Pure: the caller supplies the view and the clock.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import msgspec

from autoscale.forecast import DemandForecaster, Forecast

HostState = Literal["booting", "ready", "draining"]


class PoolPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    min_hosts: int = 1
    max_hosts: int = 100
    slots_per_host: int = 1
    lead_time_s: float = 420.0  # instance boot + UE cold start + one period: the forecast horizon
    margin_slots: float = 1.0  # safety margin on top of the forecast: this many slots ...
    margin_ratio: float = 0.05  # ... or this share of the forecast, whichever is larger
    scale_in_cooldown_s: float = 600.0  # want fewer hosts this long before draining any
    target_utilization: float = 0.7  # reactive sizer only: slots in use / slots in service
    boot_timeout_s: float = 1800.0  # a host booting this long is terminated and replaced (0: never)

    def __post_init__(self) -> None:
        if not 0 <= self.min_hosts <= self.max_hosts or self.slots_per_host < 1:
            raise ValueError("pool needs 0 <= min_hosts <= max_hosts and slots_per_host >= 1")
        if min(self.lead_time_s, self.margin_slots, self.margin_ratio, self.scale_in_cooldown_s) < 0:
            raise ValueError("lead_time_s, margins and scale_in_cooldown_s cannot be negative")
        if self.boot_timeout_s < 0:
            raise ValueError("boot_timeout_s cannot be negative (0: never)")
        if not 0 < self.target_utilization <= 1:
            raise ValueError("target_utilization must be in (0, 1]")


class HostView(msgspec.Struct, frozen=True, kw_only=True):
    host_id: str
    state: HostState
    slots: int
    busy: int  # slots with a session (or being reset after one): never scaled in
    spot: bool = False
    # Draining by the provider's word (a Spot notice) while the matchmaker still places
    # players on it: drained in the matchmaker now, terminated only once it shows draining.
    drain_pending: bool = False
    booting_since: float | None = None  # when the controller first saw it booting (None: unknown)


class PoolView(msgspec.Struct, frozen=True, kw_only=True):
    """What the autoscaler sees of one pool at ``now``."""

    now: float
    hosts: list[HostView]
    queued: int = 0

    @property
    def busy(self) -> int:
        return sum(h.busy for h in self.hosts)

    @property
    def demand(self) -> int:
        return self.busy + self.queued


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One control step, logged with everything it was decided from."""

    at: float
    sizer: str
    busy: int
    queued: int
    ready_slots: int  # free READY slots
    booting_hosts: int
    in_service_hosts: int  # booting + ready, not draining
    draining_hosts: int
    forecast: Forecast | None
    wanted_slots: float  # the sizer's answer before bounds
    desired_hosts: int
    launch: int
    drain: list[str]
    terminate: list[str]
    reason: str
    boot_timed_out: list[str] = []  # booting past boot_timeout_s: terminated (in terminate) and replaced


class Sizer(Protocol):
    name: str

    def wanted_slots(self, view: PoolView, policy: PoolPolicy) -> tuple[float, Forecast | None]: ...


class ForecastSizer:
    """Ours: feeds the forecaster the demand it sees and asks it over the lead time."""

    name = "forecast"

    def __init__(self, forecaster: DemandForecaster | None = None) -> None:
        self.forecaster = forecaster or DemandForecaster()

    def wanted_slots(self, view: PoolView, policy: PoolPolicy) -> tuple[float, Forecast | None]:
        self.forecaster.observe(view.now, view.demand)
        f = self.forecaster.forecast(view.now, policy.lead_time_s)
        return f.value + max(policy.margin_slots, policy.margin_ratio * f.value), f


class TargetTrackingSizer:
    """Reactive: slots in use (and queued) over the target utilisation, no look-ahead."""

    name = "reactive"

    def wanted_slots(self, view: PoolView, policy: PoolPolicy) -> tuple[float, Forecast | None]:
        return view.demand / policy.target_utilization, None


class StaticSizer:
    """A fixed pool of ``hosts`` (e.g. sized for the peak)."""

    name = "static"

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts

    def wanted_slots(self, view: PoolView, policy: PoolPolicy) -> tuple[float, Forecast | None]:
        return float(self.hosts * policy.slots_per_host), None


class Scaler:
    """One pool's control loop state: when it started wanting fewer hosts."""

    def __init__(self, policy: PoolPolicy, sizer: Sizer) -> None:
        self.policy = policy
        self.sizer = sizer
        self.fewer_since: float | None = None

    def decide(self, view: PoolView) -> Decision:
        p = self.policy
        wanted, forecast = self.sizer.wanted_slots(view, p)
        # Booting for longer than any boot takes (never registered, or its agent died): not
        # supply any more; terminated below and replaced like any missing host.
        stuck = [
            h.host_id
            for h in view.hosts
            if h.state == "booting"
            and h.busy == 0
            and p.boot_timeout_s > 0
            and h.booting_since is not None
            and view.now - h.booting_since >= p.boot_timeout_s
        ]
        in_service = [h for h in view.hosts if h.state != "draining" and h.host_id not in stuck]
        draining = [h for h in view.hosts if h.state == "draining"]
        floor_slots = max(wanted, view.busy)  # never size below the slots in use
        desired = min(p.max_hosts, max(p.min_hosts, math.ceil(floor_slots / p.slots_per_host - 1e-9)))
        launch, drain, reason = 0, [], "steady"
        if desired > len(in_service):
            launch, reason = desired - len(in_service), "scale_out"
            self.fewer_since = None
        elif desired < len(in_service):
            if self.fewer_since is None:
                self.fewer_since = view.now
            waited = view.now - self.fewer_since
            if waited < p.scale_in_cooldown_s:
                reason = f"cooldown ({waited:.0f} of {p.scale_in_cooldown_s:.0f} s)"
            else:
                # Idle READY hosts only; Spot ones first (interruptible and the burst capacity).
                idle = [h for h in in_service if h.state == "ready" and h.busy == 0]
                idle.sort(key=lambda h: (not h.spot, h.host_id))
                drain = [h.host_id for h in idle[: len(in_service) - desired]]
                reason = "scale_in" if drain else "scale_in_blocked (no idle host)"
                if drain:
                    self.fewer_since = None
        else:
            self.fewer_since = None
        # Draining by the provider's notice but not yet in the matchmaker: drain it there
        # first, so no player is placed on it between now and its termination.
        drain = [h.host_id for h in draining if h.drain_pending] + drain
        # Drained on an earlier decision and seen empty since: gone for good.
        terminate = [h.host_id for h in draining if h.busy == 0 and not h.drain_pending] + stuck
        if stuck:
            reason = "boot_timeout" if reason == "steady" else f"boot_timeout, {reason}"
        return Decision(
            at=view.now,
            sizer=self.sizer.name,
            busy=view.busy,
            queued=view.queued,
            ready_slots=sum(h.slots - h.busy for h in in_service if h.state == "ready"),
            booting_hosts=sum(1 for h in in_service if h.state == "booting"),
            in_service_hosts=len(in_service),
            draining_hosts=len(draining),
            forecast=forecast,
            wanted_slots=round(wanted, 3),
            desired_hosts=desired,
            launch=launch,
            drain=drain,
            terminate=terminate,
            reason=reason,
            boot_timed_out=stuck,
        )
