"""Prometheus metrics of one matchmaker replica.

Events (allocations, queue waits, session ends, time to first frame) are counted by the
replica that saw them: sum them over replicas. The fleet's state (hosts, slots, sessions,
queues) is read from the store when ``/metrics`` is scraped, so every replica reports
the same, shared numbers: take ``max`` over replicas, never ``sum``. Labels are bounded:
tenant and app (an app no slot serves is ``other``), slot and session state, end reason,
region, the abuse limit; never a host, slot, session or player id.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from matchmaker.models import Host, Session, SessionState, Slot, SlotState
from matchmaker.store import BackendUnavailable, QueueFull, Store, StoreError
from pixelfleet.redis_timing import RoundTrips

PREFIX = "pixelfleet_matchmaker_"
OUTCOMES = ("assigned", "queued", "unknown_app", "queue_full", "unavailable", "refused")
WAIT_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900)
FIRST_FRAME_BUCKETS = (0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)
ROUND_TRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
OTHER_APP = "other"
HOST_STATES = ("live", "draining", "retired", "dead")


def host_state(host: Host, now: float, heartbeat_ttl_s: float) -> str:
    """``live``, ``draining``, or for a host past its heartbeat deadline ``retired`` when it
    was draining (drained, then stopped or terminated: a planned scale-in) and ``dead``
    when it was not (lost: its sessions ended ``host_dead``). Only ``dead`` pages."""
    if host.dead or now - host.last_heartbeat > heartbeat_ttl_s:
        return "retired" if host.draining else "dead"
    return "draining" if host.draining else "live"


def slot_state(slot: Slot, host: str | None) -> str:
    """The state a slot is counted in, given its host's (``host_state``; None: no record).
    A READY slot is ``ready`` only on a live host: allocation places nothing on a draining
    or quiet one, so there it counts as ``draining`` (draining, retired) or ``dead``."""
    if slot.state is SlotState.READY and host is not None and host != "live":
        return "dead" if host == "dead" else "draining"
    return str(slot.state)


class MatchmakerMetrics:
    """The replica's registry and the metrics the service and API update."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.allocations = Counter(
            PREFIX + "allocations",
            "POST /sessions answers by outcome: assigned, queued, or a refusal (unknown_app, queue_full, "
            "unavailable, refused)",
            ["tenant", "app", "outcome"],
            registry=r,
        )
        self.queue_wait = Histogram(
            PREFIX + "queue_wait_seconds",
            "enqueued to assigned, for tickets served from the queue",
            ["tenant", "app"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.first_frame = Histogram(
            PREFIX + "time_to_first_frame_seconds",
            "session created to the player's first decoded video frame (the player page reports it)",
            ["app", "region"],
            buckets=FIRST_FRAME_BUCKETS,
            registry=r,
        )
        self.session_ends = Counter(PREFIX + "session_ends", "sessions ended, by reason", ["reason"], registry=r)
        self.store_round_trip = Histogram(
            PREFIX + "store_round_trip_seconds",
            "one read of the state store (Redis) as /readyz and /metrics make it",
            buckets=ROUND_TRIP_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            PREFIX + "store_errors", "state store (Redis) operations that failed or timed out", registry=r
        )
        self.slots = Gauge(PREFIX + "slots", "slots by state", ["tenant", "app", "state"], registry=r)
        self.hosts = Gauge(
            PREFIX + "hosts",
            "hosts by state: live, draining, retired (stopped heartbeating while draining: a scale-in), "
            "dead (stopped heartbeating while not draining: lost)",
            ["state"],
            registry=r,
        )
        self.sessions = Gauge(PREFIX + "sessions", "live sessions by state", ["tenant", "app", "state"], registry=r)
        self.queue_length = Gauge(PREFIX + "queue_length", "waiting tickets", ["tenant", "app"], registry=r)
        self.oldest_wait = Gauge(
            PREFIX + "queue_oldest_wait_seconds",
            "how long the head of the queue has waited",
            ["tenant", "app"],
            registry=r,
        )
        self.store_up = Gauge(PREFIX + "store_up", "1 if the last store read succeeded", registry=r)
        self._apps: set[tuple[str, str]] = set()  # (tenant, app) pairs some slot serves: bounded labels
        # (limit, tenant) -> refusals, bumped by ``matchmaker.limits.Limits`` as plain ints.
        self.limit_hits: Tally[tuple[str, str]] = Tally()
        self._trips: RoundTrips | None = None
        r.register(_LimitRefusals(self.limit_hits))

    def app_label(self, tenant: str, app: str) -> str:
        return app if (tenant, app) in self._apps else OTHER_APP

    def allocation(self, tenant: str, app: str, outcome: str) -> None:
        self.allocations.labels(tenant, self.app_label(tenant, app), outcome).inc()

    def ended(self, sessions: list[Session]) -> None:
        for s in sessions:
            self.session_ends.labels(str(s.end_reason)).inc()

    async def ping(self, store: Store, timeout_s: float = 2.0) -> bool:
        """One store read, timed: the round-trip histogram, the error count and readiness."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                await store.queues()
        except (StoreError, TimeoutError, OSError):
            self.store_errors.inc()
            self.store_up.set(0)
            return False
        self.store_round_trip.observe(time.perf_counter() - started)
        self.store_up.set(1)
        return True

    async def refresh(self, store: Store, clock: Callable[[], float], heartbeat_ttl_s: float) -> None:
        """Read the fleet's state into the gauges (at scrape time)."""
        trips: RoundTrips | None = getattr(store, "round_trips", None)  # a Redis store: every operation timed
        if trips is not None and trips is not self._trips:
            self._trips = trips
            self.registry.register(_StoreRoundTrips(trips))
        if not await self.ping(store):
            return
        try:
            hosts, slots, sessions, queues = (
                await store.hosts(),
                await store.slots(),
                await store.sessions(),
                await store.queues(),
            )
            waiting = {(t, a): await store.waiting(t, a, 1) for t, a, n in queues if n}
        except StoreError:
            self.store_errors.inc()
            self.store_up.set(0)
            return
        now = clock()
        by_host = {h.host_id: host_state(h, now, heartbeat_ttl_s) for h in hosts}
        host_states = Tally(by_host.values())
        self.hosts.clear()
        for state in HOST_STATES:
            self.hosts.labels(state).set(host_states[state])
        self._apps = {(s.tenant, s.app) for s in slots}
        slot_states = Tally((s.tenant, s.app, slot_state(s, by_host.get(s.host_id))) for s in slots)
        self.slots.clear()
        for tenant, app in self._apps:
            for state in SlotState:
                self.slots.labels(tenant, app, str(state)).set(slot_states[(tenant, app, str(state))])
        session_states = Tally((s.tenant, self.app_label(s.tenant, s.app), str(s.state)) for s in sessions)
        self.sessions.clear()
        for (tenant, app, state), n in session_states.items():
            if state != SessionState.ENDED:
                self.sessions.labels(tenant, app, state).set(n)
        self.queue_length.clear()
        self.oldest_wait.clear()
        for tenant, app, length in queues:
            label = self.app_label(tenant, app)
            self.queue_length.labels(tenant, label).set(length)
            head = waiting.get((tenant, app))
            self.oldest_wait.labels(tenant, label).set(max(0.0, now - head[0].enqueued_at) if head else 0.0)


class _LimitRefusals(Collector):
    """The abuse limits' refusal counts, read at scrape time (a refusal costs one dict
    increment, nothing of prometheus-client)."""

    def __init__(self, hits: Tally[tuple[str, str]]) -> None:
        self.hits = hits

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            PREFIX + "limit_refusals",
            "requests refused 429 by an abuse limit (rate_limited_*, quota_*), by limit and tenant",
            labels=["limit", "tenant"],
        )
        for (limit, tenant), n in list(self.hits.items()):
            family.add_metric([limit, tenant], n)
        yield family


class _StoreRoundTrips(Collector):
    """The Redis store's operations, timed by ``matchmaker.redis_base.guarded``."""

    def __init__(self, trips: RoundTrips) -> None:
        self.trips = trips

    def collect(self) -> Iterator[Metric]:
        yield from self.trips.families(PREFIX, "state store operations (one or more round trips each)")


def allocation_refusal(exc: StoreError) -> str:
    """The ``outcome`` label of a refused ``POST /sessions``."""
    from matchmaker.service import UnknownApp  # the service imports this module

    if isinstance(exc, UnknownApp):
        return "unknown_app"
    if isinstance(exc, QueueFull):
        return "queue_full"
    if isinstance(exc, BackendUnavailable):
        return "unavailable"
    return "refused"
