"""A dead host leaves the pool at once, and every record's times are ordered.

A host is dead from ``now - last_heartbeat > heartbeat_ttl_s`` on (docs/matchmaker-store.md,
"A host's death"): allocation, a late heartbeat, a registration and the admin listing all
apply that rule with their own ``now``, before any sweep has marked the host. Checked on
the memory store, one Redis and a Redis Cluster; the rack test runs several replicas
(matchmakers, each with its own store instance on Redis) with clocks a little apart.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from matchmaker.config import MatchmakerSettings
from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    Host,
    HostRegistration,
    Session,
    SlotReport,
    SlotSpec,
    SlotState,
)
from matchmaker.service import Allocation, Matchmaker, UnknownApp
from matchmaker.store import NoClaim, Store, UnknownHost, open_store
from pixelfleet.tokens import TokenKeys

pytestmark = pytest.mark.integration

TTL = 5.0
KEYS = TokenKeys.hs256("session-secret-" + "d" * 32)


def registration(host: str, boot: str = "b1", slots: int = 2) -> HostRegistration:
    return HostRegistration(
        host_id=host,
        boot_id=boot,
        region="eu",
        gpu_model="A10G",
        signaling_url="ws://127.0.0.1:80",
        slots=[SlotSpec(index=i, tenant="acme", app="game", streamer_id=f"{host}-{i}") for i in range(slots)],
    )


def ready(boot: str = "b1", slots: int = 2, reset_for: dict[int, str] | None = None, load: float = 0.0) -> Heartbeat:
    return Heartbeat(
        boot_id=boot,
        slots=[
            SlotReport(index=i, state=SlotState.READY, reset_for=(reset_for or {}).get(i), gpu_load=load)
            for i in range(slots)
        ],
    )


REQUEST = AllocationRequest(tenant="acme", app="game")


async def claim(store: Store, now: float) -> Session | NoClaim:
    out = await store.allocate(REQUEST, f"s-{uuid.uuid4().hex[:10]}", now, policy="spread", heartbeat_ttl_s=TTL)
    assert isinstance(out, Session | NoClaim)
    return out


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Sink:
    def __init__(self) -> None:
        self.sessions: list[Session] = []

    async def write(self, sessions: list[Session]) -> None:
        self.sessions += sessions


def matchmaker(store: Store, clock: Callable[[], float]) -> Matchmaker:
    settings = MatchmakerSettings(heartbeat_ttl_s=TTL, session_token_secret="session-secret-" + "d" * 32)
    return Matchmaker(store, settings, KEYS, Sink(), clock=clock)


def listed_dead(hosts: list[Host]) -> set[str]:
    return {h.host_id for h in hosts if h.dead}


def assert_times_ordered(s: Session) -> None:
    assert s.ended_at is not None, s
    if s.connected_at is not None:
        assert s.created_at <= s.connected_at <= s.ended_at, s
    if s.disconnected_at is not None:
        assert s.disconnected_at <= s.ended_at, s
    assert s.created_at <= s.ended_at, s


# --- (a) one host whose heartbeats stop ------------------------------------------------


async def test_a_host_past_its_deadline_gives_no_slot_from_that_moment(store: Store) -> None:
    for h in ("old", "new"):
        await store.register_host(registration(h), 100.0, heartbeat_ttl_s=TTL)
    await store.heartbeat("old", ready(), 100.0, heartbeat_ttl_s=TTL)
    await store.heartbeat("new", ready(), 103.0, heartbeat_ttl_s=TTL)
    clock = Clock(100.0)
    mm = matchmaker(store, clock)
    deadline = 100.0 + TTL
    # At the deadline itself the host is still alive, in the listing and for allocation.
    clock.t = deadline
    assert listed_dead(await mm.hosts()) == set()
    first = await claim(store, deadline)
    assert isinstance(first, Session)
    # One tick later it is listed dead, and from that moment on no allocation returns its
    # slots: each claim comes from the live host until none is left. No sweep has run.
    after = math.nextafter(deadline, math.inf)
    clock.t = after
    listing = await mm.hosts()
    assert listed_dead(listing) == {"old"}
    dead_at = {h.host_id: h.last_heartbeat for h in listing if h.dead}
    got = [await claim(store, after + i * 0.01) for i in range(4)]
    placed = [s for s in got if isinstance(s, Session)]
    assert all(s.host_id == "new" for s in placed), placed
    assert got[-1] is NoClaim.NO_SLOT
    # The listing's own times: every session on the dead host was created by its deadline.
    for s in await store.sessions():
        if s.host_id in dead_at:
            assert s.created_at - dead_at[s.host_id] <= TTL
    # The sweep then ends them, its clock later still; their times stay ordered.
    ended = await store.expire_hosts(after + 1.0, TTL)
    assert {s.host_id for s in ended} <= {"old"}
    for s in ended:
        assert s.end_reason is EndReason.HOST_DEAD
        assert_times_ordered(s)
    assert listed_dead(await store.hosts()) == {"old"}


async def test_a_late_heartbeat_does_not_revive_a_host_listed_dead(store: Store) -> None:
    await store.register_host(registration("h"), 100.0, heartbeat_ttl_s=TTL)
    await store.heartbeat("h", ready(), 100.0, heartbeat_ttl_s=TTL)
    s = await claim(store, 101.0)
    assert isinstance(s, Session)
    late = 100.0 + TTL + 0.001
    with pytest.raises(UnknownHost):
        await store.heartbeat("h", ready(), late, heartbeat_ttl_s=TTL)
    assert await claim(store, late) is NoClaim.NO_SLOT
    # The session ended with the death; the next sweep returns it, once.
    ended = await store.expire_hosts(late + 0.1, TTL)
    assert [e.session_id for e in ended] == [s.session_id]
    assert ended[0].end_reason is EndReason.HOST_DEAD
    assert_times_ordered(ended[0])
    assert await store.expire_hosts(late + 0.2, TTL) == []


# --- (c) a host that comes back ----------------------------------------------------------


async def test_a_host_that_comes_back_is_claimable_after_its_first_heartbeat(store: Store) -> None:
    await store.register_host(registration("h"), 100.0, heartbeat_ttl_s=TTL)
    await store.heartbeat("h", ready(), 100.0, heartbeat_ttl_s=TTL)
    assert isinstance(await claim(store, 101.0), Session)
    await store.expire_hosts(106.0, TTL)  # the sweep saw it dead
    # It registers again, with a new boot: its first heartbeat's reports count at once.
    await store.register_host(registration("h", boot="b2"), 107.0, heartbeat_ttl_s=TTL)
    assert await claim(store, 107.0) is NoClaim.NO_SLOT  # STARTING until it says READY
    await store.heartbeat("h", ready("b2"), 107.1, heartbeat_ttl_s=TTL)
    got = [await claim(store, 107.2), await claim(store, 107.2)]
    assert sorted(s.slot_id for s in got if isinstance(s, Session)) == ["h/0", "h/1"]


async def test_a_host_past_its_deadline_registers_again_under_the_same_boot(store: Store) -> None:
    await store.register_host(registration("h"), 100.0, heartbeat_ttl_s=TTL)
    await store.heartbeat("h", ready(), 100.0, heartbeat_ttl_s=TTL)
    s = await claim(store, 101.0)
    assert isinstance(s, Session)
    # No sweep ran: the late heartbeat is refused, the agent registers again (same boot:
    # it only lost its network) and is a new incarnation whose slots start cold.
    with pytest.raises(UnknownHost):
        await store.heartbeat("h", ready(), 106.0, heartbeat_ttl_s=TTL)
    host = await store.register_host(registration("h"), 106.1, heartbeat_ttl_s=TTL)
    assert not host.dead and host.last_heartbeat == 106.1
    await store.heartbeat("h", ready(), 106.2, heartbeat_ttl_s=TTL)
    got = [await claim(store, 106.3), await claim(store, 106.3)]
    assert sorted(x.slot_id for x in got if isinstance(x, Session)) == ["h/0", "h/1"]
    ended = await store.expire_hosts(106.4, TTL)
    assert [e.session_id for e in ended] == [s.session_id]
    assert_times_ordered(ended[0])


async def test_a_heartbeat_after_a_replica_found_the_host_overdue_puts_every_slot_back(store: Store) -> None:
    """Clocks a little apart: a replica whose clock runs ahead finds the host overdue and
    takes its slots out of the pool; the host's next heartbeat, through a replica whose
    clock is on time, is in time, and every slot is claimable again at once, the ones that
    heartbeat did not report included (an agent that sends only what changed)."""
    await store.register_host(registration("h", slots=3), 100.0, heartbeat_ttl_s=TTL)
    await store.heartbeat("h", ready(slots=3), 100.0, heartbeat_ttl_s=TTL)
    assert await claim(store, 105.5) is NoClaim.NO_SLOT  # the replica ahead: overdue
    await store.heartbeat("h", Heartbeat(boot_id="b1", slots=[]), 104.9, heartbeat_ttl_s=TTL)
    got = [await claim(store, 105.0) for _ in range(3)]
    assert sorted(s.slot_id for s in got if isinstance(s, Session)) == ["h/0", "h/1", "h/2"]


# --- records' times -------------------------------------------------------------------


async def test_an_end_by_a_lagging_clock_is_never_before_the_session_began(store: Store) -> None:
    await store.register_host(registration("h", slots=3), 100.0, heartbeat_ttl_s=TTL)
    await store.heartbeat("h", ready(slots=3), 100.0, heartbeat_ttl_s=TTL)
    a, b, c = [await claim(store, 102.0) for _ in range(3)]
    assert isinstance(a, Session) and isinstance(b, Session) and isinstance(c, Session)
    # Another replica's clock is 0.5 s behind: it reports a connect, then ends one session.
    connected = await store.mark_connected(a.session_id, 101.5)
    assert connected is not None and connected.connected_at == 102.0
    ended = await store.end_session(b.session_id, EndReason.FORCE_ENDED, 101.5)
    assert ended is not None and ended.ended_at == 102.0
    # A replica ahead connects c; the sweep's clock, read before that, ends it by host death.
    assert await store.mark_connected(c.session_id, 106.0) is not None
    done = {s.session_id: s for s in await store.expire_hosts(105.5, TTL)}
    assert set(done) == {a.session_id, c.session_id}
    assert done[c.session_id].ended_at == 106.0
    for s in done.values():
        assert_times_ordered(s)


# --- (b) a rack of hosts stops under concurrent allocation -----------------------------


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[list[Store]]:
    """Three stores over the same state: one shared memory store, or three clients of one
    Redis (or Cluster) on one key prefix, as three matchmaker replicas have."""
    if request.param == "memory":
        one = open_store("memory://")
        stores = [one, one, one]
    else:
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
        prefix = f"t{uuid.uuid4().hex[:8]}"
        stores = [open_store(url, prefix=prefix) for _ in range(3)]
    yield stores
    for s in stores:
        await s.aclose()


@dataclass
class Agent:
    host: str
    store: Store
    clock: Callable[[], float]
    slots: int
    load: float
    resets: dict[int, str] = field(default_factory=dict)
    stopped: bool = False

    async def register(self) -> None:
        self.resets.clear()
        await self.store.register_host(
            registration(self.host, slots=self.slots), self.clock(), heartbeat_ttl_s=RACK_TTL
        )

    async def run(self, period_s: float) -> None:
        """Heartbeats every ``period_s``, reporting each slot READY after its last reset;
        registers again when told it is unknown (as the real agent does)."""
        await self.register()
        while not self.stopped:
            try:
                _, reply = await self.store.heartbeat(
                    self.host,
                    ready(slots=self.slots, reset_for=self.resets, load=self.load),
                    self.clock(),
                    heartbeat_ttl_s=RACK_TTL,
                )
                self.resets.update({r.index: r.session_id for r in reply.reset})
            except UnknownHost:
                await self.register()
            await asyncio.sleep(period_s)


RACK_TTL = 1.5  # far above the 0.05 s beat period: a loaded CI box stalls the loop for tenths of a second


class ListingClock:
    """The wall clock, remembering its last reading: ``Matchmaker.hosts`` reads it once,
    before the store, so after a listing it holds that listing's own time."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self) -> float:
        self.last = time.time()
        return self.last


async def test_a_rack_stopping_under_load_takes_no_session_after_it_is_listed_dead(replicas: list[Store]) -> None:
    """16 hosts, 8 of them (a rack) stop heartbeating together while three replicas
    allocate and end sessions and sweep (at about the real period). From a listing loop: the
    first listing that showed each rack host dead, at that listing's own time. No session
    on a rack host was created after that moment, none past the deadline of the listing's
    last heartbeat, and every record's times are ordered."""
    sinks = [Sink() for _ in replicas]
    settings = MatchmakerSettings(heartbeat_ttl_s=RACK_TTL, session_token_secret="session-secret-" + "d" * 32)
    mms = [Matchmaker(store, settings, KEYS, sink) for store, sink in zip(replicas, sinks, strict=True)]
    listing_clock = ListingClock()
    admin = Matchmaker(replicas[0], settings, KEYS, Sink(), clock=listing_clock)
    rack = [f"rack-{i}" for i in range(8)]
    others = [f"host-{i}" for i in range(8)]
    # The rack is the least loaded: spread placement sends sessions there first.
    agents = [
        Agent(h, replicas[i % 3], time.time, slots=16, load=0.1 if h in rack else 0.3)
        for i, h in enumerate(rack + others)
    ]
    beats = [asyncio.create_task(a.run(0.05)) for a in agents]
    stop = asyncio.Event()
    first_dead: dict[str, float] = {}
    last_listing: list[Host] = []

    async def lister() -> None:
        nonlocal last_listing
        while not stop.is_set():
            listing = await admin.hosts()
            for h in listing:
                if h.dead and h.host_id not in first_dead:
                    first_dead[h.host_id] = listing_clock.last
            last_listing = listing
            await asyncio.sleep(0.002)

    async def player(mm: Matchmaker, rng: random.Random) -> None:
        while not stop.is_set():
            try:
                out = await mm.allocate(REQUEST)
            except UnknownApp:  # the box stalled every live host past its deadline: they come back
                await asyncio.sleep(0.05)
                continue
            if isinstance(out, Allocation):
                sid = out.session.session_id
                if rng.random() < 0.7:
                    await mm.player_connected(sid)
                await asyncio.sleep(rng.uniform(0.0, 0.05))
                await mm.end(sid, EndReason.PLAYER_LEFT)
            else:
                await mm.cancel(out.ticket.ticket_id)
            # Paced, so that the rack still has READY slots when it dies (a stopped host
            # resets none of its slots again): placement would pick them.
            await asyncio.sleep(rng.uniform(0.05, 0.1))

    async def sweeper(mm: Matchmaker) -> None:
        while not stop.is_set():
            await mm.sweep()
            await asyncio.sleep(0.3)  # about the real period: deaths wait for no sweep

    await asyncio.sleep(0.3)  # every host registered and ready
    rng = random.Random(12)
    work = [asyncio.create_task(player(mm, random.Random(rng.random()))) for mm in mms for _ in range(2)]
    work += [asyncio.create_task(lister())]
    work += [asyncio.create_task(sweeper(mm)) for mm in mms]
    await asyncio.sleep(0.4)
    for a in agents[:8]:
        a.stopped = True  # the rack loses power
    await asyncio.sleep(RACK_TTL + 0.8)
    stop.set()
    await asyncio.gather(*work)
    for a in agents:
        a.stopped = True
    await asyncio.gather(*beats)
    for mm in mms:
        for s in await mm.store.sessions():
            await mm.end(s.session_id, EndReason.FORCE_ENDED)
        await mm.sweep()
        if mm._flushing is not None:
            await mm._flushing
        await mm._flush_records()
    records = {s.session_id: s for sink in sinks for s in sink.sessions}

    # (A live host the loaded box stalled past its deadline died too, and came back anew.)
    assert set(rack) <= set(first_dead), first_dead
    last_beat = {h.host_id: h.last_heartbeat for h in last_listing}
    on_rack = [s for s in records.values() if s.host_id in rack]
    assert on_rack, "the rack took sessions before it stopped"
    for s in on_rack:
        assert s.created_at <= first_dead[s.host_id], s
        assert s.created_at - last_beat[s.host_id] <= RACK_TTL, s
    for s in records.values():
        assert_times_ordered(s)
    # The live half kept serving after the rack died.
    assert any(s.created_at > max(first_dead.values()) for s in records.values())
