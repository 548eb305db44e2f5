"""Discrete-event replay of one trace through one sizer and the real ``Scaler``.

Events (a heap, in time order): player arrivals, session ends, hosts becoming READY after
boot + cold start, Spot interruption notices and reclaims, and the autoscaler's control
ticks. A player takes a free READY slot (packing busy hosts first, as the matchmaker's
``pack`` placement) or waits in a FIFO queue. Every host is billed from launch until it
is terminated or reclaimed.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

import msgspec

from autoscale.policy import Decision, HostState, HostView, PoolView, Scaler
from autoscale.simulate.config import SimConfig
from autoscale.simulate.traces import Trace

ARRIVE, END, READY, TICK, NOTICE, RECLAIM = range(6)


@dataclass
class SimHost:
    host_id: str
    spot: bool
    launched: float
    ready_at: float
    state: HostState | None = "booting"  # None: terminated or reclaimed
    sessions: set[int] = field(default_factory=set)
    gone_at: float | None = None


class Sample(msgspec.Struct, array_like=True):
    t: float
    demand: int  # busy + queued
    ready_slots: int  # slots on READY hosts in service (busy or free)
    hosts: int  # hosts billed
    oldest_wait_s: float  # how long the queue's head has waited


class Result(msgspec.Struct, kw_only=True):
    trace: str
    sizer: str
    sessions: int
    gpu_hours: float
    busy_gpu_hours: float
    idle_gpu_hours: float
    cost: float
    wait_p50_s: float
    wait_p95_s: float
    wait_p99_s: float
    waited_share: float  # sessions that found no free READY slot
    cold_start_share: float  # sessions served by a host that became READY after they arrived
    spot_interruptions: int
    spot_absorbed: int  # interruptions that cut no session
    sessions_cut: int  # sessions ended by a Spot reclaim
    peak_hosts: int
    samples: list[Sample]
    decisions: int


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


class Simulation:
    def __init__(self, config: SimConfig, trace: Trace, scaler: Scaler, *, keep_decisions: bool = False) -> None:
        self.config = config
        self.trace = trace
        self.scaler = scaler
        self.rng = random.Random(config.seed)
        self.heap: list[tuple[float, int, int, int | str]] = []
        self.seq = 0
        self.hosts: dict[str, SimHost] = {}
        self.live: dict[str, SimHost] = {}  # not yet terminated
        self.queue: deque[int] = deque()
        n = len(trace.arrivals)
        self.started: list[float | None] = [None] * n
        self.host_of: list[str | None] = [None] * n
        self.cold = 0
        self.waited = 0
        self.busy_s = 0.0
        self.cut = 0
        self.interruptions = 0
        self.absorbed = 0
        self.samples: list[Sample] = []
        self.decisions: list[Decision] = []
        self.keep_decisions = keep_decisions
        self.n_decisions = 0
        self.next_id = 0

    def _push(self, t: float, kind: int, data: int | str) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, data))

    # --- supply -------------------------------------------------------------------------------

    def _launch(self, now: float) -> None:
        c = self.config
        base = c.policy.min_hosts if c.on_demand_base is None else c.on_demand_base
        on_demand = sum(1 for h in self.live.values() if not h.spot)
        spot = c.spot and on_demand >= base and self.rng.random() >= c.spot_refused
        self.next_id += 1
        host = SimHost(
            host_id=f"h{self.next_id}",
            spot=spot,
            launched=now,
            ready_at=now + c.boot_s.draw(self.rng) + c.cold_start_s.draw(self.rng),
        )
        self.hosts[host.host_id] = host
        self.live[host.host_id] = host
        self._push(host.ready_at, READY, host.host_id)
        if spot and c.spot_interruptions_per_h > 0:
            notice = now + self.rng.expovariate(c.spot_interruptions_per_h / 3600.0)
            if notice < self.trace.duration_s:
                self._push(notice, NOTICE, host.host_id)

    def _free_host(self) -> SimHost | None:
        best = None
        sph = self.config.policy.slots_per_host
        for h in self.live.values():
            if h.state == "ready" and len(h.sessions) < sph and (best is None or len(h.sessions) > len(best.sessions)):
                best = h
                if len(h.sessions) == sph - 1:
                    break
        return best

    def _start(self, i: int, host: SimHost, now: float) -> None:
        arrival = self.trace.arrivals[i]
        self.started[i] = now
        self.host_of[i] = host.host_id
        if now > arrival:
            self.waited += 1
            if host.ready_at > arrival:
                self.cold += 1
        host.sessions.add(i)
        self._push(now + self.trace.sessions[i], END, i)

    def _serve_queue(self, now: float) -> None:
        while self.queue:
            host = self._free_host()
            if host is None:
                return
            self._start(self.queue.popleft(), host, now)

    def _gone(self, host: SimHost, now: float) -> None:
        host.state = None
        host.gone_at = now
        self.live.pop(host.host_id, None)

    # --- the control loop ---------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        view = PoolView(
            now=now,
            queued=len(self.queue),
            hosts=[
                HostView(
                    host_id=h.host_id,
                    state=h.state,
                    slots=self.config.policy.slots_per_host,
                    busy=len(h.sessions),
                    spot=h.spot,
                )
                for h in self.live.values()
                if h.state is not None
            ],
        )
        d = self.scaler.decide(view)
        self.n_decisions += 1
        if self.keep_decisions:
            self.decisions.append(d)
        for _ in range(d.launch):
            self._launch(now)
        for host_id in d.drain:
            self.live[host_id].state = "draining"
        for host_id in d.terminate:
            self._gone(self.live[host_id], now)
        head = self.trace.arrivals[self.queue[0]] if self.queue else now
        ready = sum(self.config.policy.slots_per_host for h in self.live.values() if h.state == "ready")
        self.samples.append(Sample(now, view.demand, ready, len(self.live), now - head))

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> Result:
        for i, t in enumerate(self.trace.arrivals):
            self._push(t, ARRIVE, i)
        self._push(0.0, TICK, 0)
        end = self.trace.duration_s
        while self.heap:
            now, _, kind, data = heapq.heappop(self.heap)
            if now > end:
                break
            if kind == ARRIVE:
                assert isinstance(data, int)
                host = None if self.queue else self._free_host()
                if host is None:
                    self.queue.append(data)
                else:
                    self._start(data, host, now)
            elif kind == END:
                assert isinstance(data, int)
                h = self.hosts[str(self.host_of[data])]
                if data in h.sessions:  # not cut by a reclaim
                    h.sessions.discard(data)
                    self.busy_s += now - (self.started[data] or now)
                    self._serve_queue(now)
            elif kind == READY:
                h = self.hosts[str(data)]
                if h.state == "booting":
                    h.state = "ready"
                    self._serve_queue(now)
            elif kind == TICK:
                self._tick(now)
                self._push(now + self.config.period_s, TICK, 0)
            elif kind == NOTICE:
                h = self.hosts[str(data)]
                if h.state is not None:
                    h.state = "draining"
                    self._push(now + self.config.spot_notice_s, RECLAIM, h.host_id)
            elif kind == RECLAIM:
                h = self.hosts[str(data)]
                self.interruptions += 1
                if h.state is None:
                    self.absorbed += 1
                    continue
                self.absorbed += not h.sessions
                for i in h.sessions:
                    self.cut += 1
                    self.busy_s += now - (self.started[i] or now)
                h.sessions.clear()
                self._gone(h, now)
        return self._result(end)

    def _result(self, end: float) -> Result:
        for h in self.live.values():
            for i in h.sessions:
                self.busy_s += end - (self.started[i] or end)
        price = self.config.price
        gpu_s = 0.0
        cost = 0.0
        for h in self.hosts.values():
            billed = (h.gone_at if h.gone_at is not None else end) - h.launched
            gpu_s += billed
            cost += billed / 3600.0 * (price.spot_per_h if h.spot else price.on_demand_per_h)
        waits = sorted(
            (s if s is not None else end) - a for s, a in zip(self.started, self.trace.arrivals, strict=True)
        )
        n = max(1, len(waits))
        busy_gpu_h = self.busy_s / self.config.policy.slots_per_host / 3600.0
        return Result(
            trace=self.trace.name,
            sizer=self.scaler.sizer.name,
            sessions=len(waits),
            gpu_hours=gpu_s / 3600.0,
            busy_gpu_hours=busy_gpu_h,
            idle_gpu_hours=gpu_s / 3600.0 - busy_gpu_h,
            cost=cost,
            wait_p50_s=percentile(waits, 0.50),
            wait_p95_s=percentile(waits, 0.95),
            wait_p99_s=percentile(waits, 0.99),
            waited_share=(self.waited + sum(1 for s in self.started if s is None)) / n,
            cold_start_share=self.cold / n,
            spot_interruptions=self.interruptions,
            spot_absorbed=self.absorbed,
            sessions_cut=self.cut,
            peak_hosts=max((s.hosts for s in self.samples), default=0),
            samples=self.samples,
            decisions=self.n_decisions,
        )
