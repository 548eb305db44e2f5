"""Property-based tests of the allocator's state machine, on both stores.

A hypothesis ``RuleBasedStateMachine`` registers hosts (new, repeated, twins, after
death), heartbeats random slot states (with right, stale and wrong ``reset_for``),
allocates (with and without a queue ticket, one at a time and racing), connects,
disconnects, reattaches, touches and ends sessions, drains hosts, moves the clock and
expires silent hosts, and enqueues (with and without client keys: rejoins), marks
heard and left, serves and finishes (guarded or not) tickets.

Each run drives a list of backends in lockstep: every call must give the same answer
(or raise the same error) on each, the memory store being the reference, and after
every step the invariants must hold on each:

- no slot has two live sessions; every live session's slot is ASSIGNED to it, and
  every ASSIGNED slot belongs to a live session;
- on Redis, the placement indexes hold exactly the READY slots of live, non-draining hosts;
- racing allocations never give one slot to two sessions;
- each queue's waiting tickets have positions 1..n, in order;
- a client key has at most one waiting ticket per tenant and app;
- a ticket marked left is never served.
- at a few clock points and timeout settings, ``due_sessions`` returns exactly the
  sessions ``due_endings`` ends among all live ones (the sweep reads only those).

The stores are async and the machine is not: each machine runs its own event loop and
creates its Redis client inside it. Each example uses its own key prefix (no FLUSHDB).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    Host,
    HostRegistration,
    Session,
    SessionState,
    Slot,
    SlotReport,
    SlotSpec,
    SlotState,
    Ticket,
    TicketState,
)
from matchmaker.store import NoClaim, Store, StoreError, open_store
from matchmaker.timeouts import due_endings
from tests.integration.test_store_allocate import best_slots
from tests.support.redis_peek import placement_index

pytestmark = pytest.mark.integration

T = TypeVar("T")

HOSTS = ["h1", "h2", "h3"]
BOOTS = ["b1", "b2"]
TENANTS = ["acme", "beta"]
APPS = ["game", "demo"]
CLIENTS = [None, "alice", "bob"]
REGION = {"h1": "eu", "h2": "us", "h3": "eu"}
GPU = {"h1": "A10G", "h2": "A10G", "h3": "L4"}
TTL_S = 10.0
REPORTED = [SlotState.READY, SlotState.READY, SlotState.STARTING, SlotState.DEAD, SlotState.RESETTING]
loads = st.floats(min_value=0.0, max_value=1.0)
# Timeouts a few steps long (the clock moves up to 4 s a step), and all off but the grace.
DUE_RULES = [
    {"connect_timeout_s": 5.0, "reconnect_grace_s": 2.0, "idle_timeout_s": 8.0, "max_session_s": 30.0},
    {"connect_timeout_s": 0.0, "reconnect_grace_s": 0.0, "idle_timeout_s": 0.0, "max_session_s": 0.0},
]
DUE_AT = [0.0, 2.5, 7.25, 31.0]  # seconds after the machine's clock


def _key(value: Any) -> Any:
    """Order-insensitive form of a listing, for comparing backends."""
    if isinstance(value, list) and value and isinstance(value[0], Slot):
        return sorted(value, key=lambda s: s.slot_id)
    if isinstance(value, list) and value and isinstance(value[0], Session):
        return sorted(value, key=lambda s: s.session_id)
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return sorted(value)
    return value


class AllocatorMachine(RuleBasedStateMachine):
    backends: ClassVar[tuple[str, ...]] = ("memory",)
    urls: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        prefix = f"sm{uuid.uuid4().hex[:10]}"
        self.stores: list[Store] = [self._run(self._open(b, prefix)) for b in self.backends]
        self.now = 1_700_000_000.0
        self.session_ids: list[str] = []
        self.tickets: list[Ticket] = []
        self.pending_reset: dict[str, str] = {}  # slot id -> session the agent was told to reset after
        self.boots: dict[str, str] = {}  # host -> boot of its latest registration
        self.n = 0

    async def _open(self, backend: str, prefix: str) -> Store:
        return open_store("memory://" if backend == "memory" else self.urls[backend], prefix=prefix)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for store in self.stores:
            self._run(store.aclose())
        self.loop.close()

    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.n}"

    def call(self, name: str, *args: Any, ordered: bool = True, **kwargs: Any) -> Any:
        """The same call on every backend: same answer or same error. Returns the
        reference's answer, or the error's class."""
        outcomes = []
        for store in self.stores:
            try:
                outcomes.append(self._run(getattr(store, name)(*args, **kwargs)))
            except StoreError as exc:
                outcomes.append(type(exc))
        first = outcomes[0]
        for backend, other in zip(self.backends[1:], outcomes[1:], strict=True):
            if ordered:
                assert other == first, f"{name}{args}: {backend} gave {other!r}, memory {first!r}"
            else:
                assert _key(other) == _key(first), f"{name}{args}: {backend} gave {other!r}, memory {first!r}"
        return first

    # --- hosts ----------------------------------------------------------------------

    @initialize(tenant=st.sampled_from(TENANTS), app=st.sampled_from(APPS), slots=st.integers(1, 4))
    def first_host(self, tenant: str, app: str, slots: int) -> None:
        self.register("h1", "b1", [(i, tenant, app) for i in range(slots)], warm=True)

    @rule(
        host=st.sampled_from(HOSTS),
        boot=st.sampled_from(BOOTS),
        specs=st.lists(
            st.tuples(st.integers(0, 3), st.sampled_from(TENANTS), st.sampled_from(APPS)),
            min_size=1,
            max_size=4,
            unique_by=lambda spec: spec[0],  # a registration with one index twice is refused (models)
        ),
        warm=st.booleans(),
    )
    def register(self, host: str, boot: str, specs: list[tuple[int, str, str]], warm: bool) -> None:
        reg = HostRegistration(
            host_id=host,
            boot_id=boot,
            region=REGION[host],
            gpu_model=GPU[host],
            signaling_url=f"ws://{host}:80",
            slots=[SlotSpec(index=i, tenant=t, app=a, streamer_id=f"{host}-{i}") for i, t, a in specs],
        )
        out = self.call("register_host", reg, self.now)
        if isinstance(out, Host):
            self.boots[host] = out.boot_id
            if warm:
                self._healthy(host, 0.5)

    def _beat(self, host: str, boot: str, reports: list[SlotReport], load: float) -> None:
        hb = Heartbeat(boot_id=boot, slots=reports, nvenc_load=load, gpu_load=load)
        out = self.call("heartbeat", host, hb, self.now)
        if isinstance(out, tuple):
            ended, reply = out
            assert all(s.state is SessionState.ENDED and s.end_reason is EndReason.SLOT_FAILED for s in ended)
            if ended:
                event("heartbeat ended a session")
            if any(
                r.reset_for
                and r.reset_for == self.pending_reset.get(f"{host}/{r.index}")
                and r.state is SlotState.READY
                for r in reports
            ):
                event("heartbeat reported a reset")
            for r in reply.reset:
                self.pending_reset[f"{host}/{r.index}"] = r.session_id

    @precondition(lambda self: self.boots)
    @rule(data=st.data(), load=loads)
    def healthy_heartbeat(self, data: st.DataObject, load: float) -> None:
        """A well-behaved agent: every slot ready, resets reported for the right session."""
        self._healthy(data.draw(st.sampled_from(sorted(self.boots))), load)

    def _healthy(self, host: str, load: float) -> None:
        self._beat(
            host,
            self.boots[host],
            [
                SlotReport(
                    index=i,
                    state=SlotState.READY,
                    nvenc_load=load,
                    gpu_load=load,
                    reset_for=self.pending_reset.get(f"{host}/{i}"),
                )
                for i in range(4)
            ],
            load,
        )

    @rule(
        host=st.sampled_from([*HOSTS, "ghost"]),
        boot=st.sampled_from(["live", "live", *BOOTS]),
        data=st.data(),
        load=loads,
        reports=st.lists(
            st.tuples(
                st.integers(0, 4),
                st.sampled_from(REPORTED),
                loads,
                loads,
                st.sampled_from(["none", "right", "right", "other"]),
            ),
            max_size=5,
        ),
    )
    def heartbeat(
        self,
        host: str,
        boot: str,
        data: st.DataObject,
        load: float,
        reports: list[tuple[int, SlotState, float, float, str]],
    ) -> None:
        """Any agent: random states and loads, stale or wrong ``reset_for``, wrong boots."""
        slot_reports = []
        for index, state, nvenc, gpu, which in reports:
            reset_for = None
            if which == "right":
                reset_for = self.pending_reset.get(f"{host}/{index}")
            elif which == "other" and self.session_ids:
                reset_for = data.draw(st.sampled_from(self.session_ids))
            slot_reports.append(
                SlotReport(index=index, state=state, nvenc_load=nvenc, gpu_load=gpu, reset_for=reset_for)
            )
        self._beat(host, self.boots.get(host, "b1") if boot == "live" else boot, slot_reports, load)

    @rule(host=st.sampled_from([*HOSTS, "ghost"]), draining=st.booleans())
    def drain(self, host: str, draining: bool) -> None:
        self.call("set_draining", host, draining)

    @rule(dt=st.floats(min_value=0.0, max_value=4.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule()
    def expire(self) -> None:
        ended = self.call("expire_hosts", self.now, TTL_S)
        assert all(s.end_reason is EndReason.HOST_DEAD for s in ended)
        if ended:
            event("expiry ended a session")

    @rule(retention=st.sampled_from([0.5, 5.0, 20.0]))
    def forget(self, retention: float) -> None:
        """Dead hosts past the retention leave the registry (with their slots)."""
        gone = self.call("forget_hosts", self.now, retention)
        for host in gone:
            event("a dead host was forgotten")
            assert host not in {h.host_id for h in self.call("hosts")}
            self.boots.pop(host, None)

    @precondition(lambda self: self.boots)
    @rule(data=st.data(), extra=st.floats(min_value=0.001, max_value=3.0))
    def host_goes_silent(self, data: st.DataObject, extra: float) -> None:
        """One host stops heartbeating for longer than the TTL while the others go on."""
        silent = data.draw(st.sampled_from(sorted(self.boots)))
        self.now += TTL_S + extra
        for host in sorted(self.boots):
            if host != silent:
                self._healthy(host, 0.25)
        self.expire()

    # --- the pool -------------------------------------------------------------------

    def _claimable(self, store: Store, tenant: str, app: str) -> list[Slot]:
        """READY slots of live, non-draining hosts: what allocate may claim (from the listings)."""
        hosts: dict[str, Host] = {h.host_id: h for h in self._run(store.hosts())}
        return [
            s
            for s in self._run(store.slots())
            if s.tenant == tenant
            and s.app == app
            and s.state is SlotState.READY
            and not hosts[s.host_id].dead
            and not hosts[s.host_id].draining
        ]

    async def _race(self, store: Store, request: AllocationRequest, ids: list[str], policy: str) -> list[Any]:
        return list(await asyncio.gather(*(store.allocate(request, sid, self.now, policy=policy) for sid in ids)))

    @rule(
        tenant=st.sampled_from(TENANTS),
        app=st.sampled_from(APPS),
        racers=st.integers(2, 6),
        policy=st.sampled_from(["spread", "pack"]),
    )
    def race(self, tenant: str, app: str, racers: int, policy: str) -> None:
        """Concurrent allocations on each store: each claimable slot goes to one of them at
        most. Which racer wins which slot is up to the interleaving, so the winners are
        ended and their slots fail and come back READY, leaving every store as before."""
        request = AllocationRequest(tenant=tenant, app=app)
        queued = any((t, a) == (tenant, app) for t, a, _ in self.call("queues", ordered=False))
        serves = self.call("serves", tenant, app)
        pool = {s.slot_id: s for s in self._claimable(self.stores[0], tenant, app)}
        claimed: list[set[str]] = []
        for store in self.stores:
            ids = [self._id("r") for _ in range(racers)]
            out = self._run(self._race(store, request, ids, policy))
            won = [o for o in out if isinstance(o, Session)]
            if queued:
                assert out == [NoClaim.QUEUE_AHEAD] * racers, out
            else:
                lost = NoClaim.NO_SLOT if serves else NoClaim.UNKNOWN_APP
                assert len(won) == min(racers, len(pool)) and out.count(lost) == racers - len(won), (out, pool)
            slots = {w.slot_id for w in won}
            assert len(slots) == len(won) and slots <= set(pool), (won, pool)
            live = {x.session_id: x.slot_id for x in self._run(store.sessions())}
            assert all(live.get(w.session_id) == w.slot_id for w in won)
            claimed.append(slots)
            for w in won:
                self._run(store.end_session(w.session_id, EndReason.PLAYER_LEFT, self.now))
        if claimed and claimed[0]:
            event("racing allocations claimed slots")
        assert all(len(c) == len(claimed[0]) for c in claimed), claimed
        # Each host reports its raced slots failed (all in one heartbeat: a reply lists the
        # slots still resetting, named by each store's own racer) and then up again: READY,
        # as before, on every store.
        raced = [pool[sid] for sid in sorted(set().union(*claimed))]
        for host in self.call("hosts"):
            mine = [slot for slot in raced if slot.host_id == host.host_id]
            for state in (SlotState.DEAD, SlotState.READY) if mine else ():
                self._beat(
                    host.host_id,
                    host.boot_id,
                    [
                        SlotReport(
                            index=int(slot.slot_id.rsplit("/", 1)[1]),
                            state=state,
                            nvenc_load=slot.nvenc_load,
                            gpu_load=slot.gpu_load,
                        )
                        for slot in mine
                    ],
                    host.nvenc_load,
                )
        assert [len(self._claimable(store, tenant, app)) for store in self.stores] == [len(pool)] * len(self.stores)

    @rule(
        tenant=st.sampled_from(TENANTS),
        app=st.sampled_from(APPS),
        client=st.sampled_from(CLIENTS),
        policy=st.sampled_from(["spread", "pack"]),
        region=st.sampled_from([None, "eu", "us"]),
        gpu=st.sampled_from([None, "A10G", "L4"]),
        data=st.data(),
    )
    def allocate(
        self,
        tenant: str,
        app: str,
        client: str | None,
        policy: str,
        region: str | None,
        gpu: str | None,
        data: st.DataObject,
    ) -> None:
        """Placement and claim in one step, in lockstep on every store. Placement breaks
        exact ties by chance, so a request is only made when its best slot is unique."""
        request = AllocationRequest(tenant=tenant, app=app, client_key=client, region=region, gpu_model=gpu)
        ticket_id = None
        if len(self.tickets) > 0 and data.draw(st.booleans()):
            ticket_id = data.draw(st.sampled_from(self.tickets)).ticket_id
        pool = self._claimable(self.stores[0], tenant, app)
        best = best_slots(pool, request, policy) if pool else set()
        if len(best) > 1:
            event("allocate: tied best slots, not asked")
            return
        sid = self._id("s")
        left = ticket_id is not None and getattr(self.call("ticket", ticket_id), "left_at", None) is not None
        out = self.call("allocate", request, sid, self.now, policy=policy, ticket_id=ticket_id)
        if isinstance(out, Session):
            assert out.slot_id in best and out.session_id == sid, (out, best)
            assert not left, "a ticket marked left was served"
            event("allocated with a ticket" if ticket_id else "allocated")
            self.session_ids.append(sid)
            assert self.call("session", sid) == out
            if ticket_id is not None:
                served = self.call("ticket", ticket_id)
                assert served.state is TicketState.SERVED and served.session_id == sid
        elif left:
            event("a ticket marked left got no slot")
        else:
            event(f"allocate: {out}")

    # --- sessions -------------------------------------------------------------------

    @precondition(lambda self: self.session_ids)
    @rule(data=st.data(), op=st.sampled_from(["mark_connected", "mark_disconnected", "reattach", "touch", "session"]))
    def session_op(self, data: st.DataObject, op: str) -> None:
        sid = data.draw(st.sampled_from(self.session_ids))
        self.call(op, sid) if op == "session" else self.call(op, sid, self.now)

    @precondition(lambda self: self.session_ids)
    @rule(data=st.data(), reason=st.sampled_from(list(EndReason)))
    def end(self, data: st.DataObject, reason: EndReason) -> None:
        sid = data.draw(st.sampled_from(self.session_ids))
        ended = self.call("end_session", sid, reason, self.now)
        if ended is not None:
            event("ended a session")
            assert ended.state is SessionState.ENDED and ended.ended_at == self.now
            assert self.call("end_session", sid, reason, self.now) is None
            assert self.call("session", sid) is None

    @rule(
        tenant=st.sampled_from(TENANTS),
        app=st.sampled_from([*APPS, "nope"]),
        client=st.sampled_from(["alice", "bob"]),
        limit=st.integers(-1, 3),
    )
    def queries(self, tenant: str, app: str, client: str, limit: int) -> None:
        self.call("serves", tenant, app)
        self.call("waiting", tenant, app, limit)

    # --- queue ----------------------------------------------------------------------

    @rule(
        tenant=st.sampled_from(TENANTS),
        app=st.sampled_from(APPS),
        max_length=st.integers(0, 3),
        client=st.sampled_from(CLIENTS),
    )
    def enqueue(self, tenant: str, app: str, max_length: int, client: str | None) -> None:
        ticket = Ticket(
            ticket_id=self._id("t"),
            request=AllocationRequest(tenant=tenant, app=app, client_key=client),
            enqueued_at=self.now,
            seen_at=self.now,
        )
        out = self.call("enqueue", ticket, max_length)
        if isinstance(out, tuple):
            got, position = out
            if got.ticket_id == ticket.ticket_id:
                self.tickets.append(ticket)
            else:
                event("a client key rejoined its ticket")
                assert client is not None and got.request == ticket.request
                assert (got.state, got.seen_at, got.left_at) == (TicketState.WAITING, self.now, None)
                assert self.call("ticket", ticket.ticket_id) is None
            assert self.call("position", got.ticket_id) == position

    @precondition(lambda self: self.tickets)
    @rule(data=st.data(), op=st.sampled_from(["ticket_heard", "ticket_left"]))
    def mark_ticket(self, data: st.DataObject, op: str) -> None:
        ticket = data.draw(st.sampled_from(self.tickets))
        if self.call(op, ticket.ticket_id, self.now):
            event(f"{op} a waiting ticket")
            now = self.call("ticket", ticket.ticket_id)
            assert now.state is TicketState.WAITING
            assert (now.left_at is None) if op == "ticket_heard" else (now.left_at is not None)

    @precondition(lambda self: self.tickets)
    @rule(
        data=st.data(),
        state=st.sampled_from([TicketState.CANCELLED, TicketState.EXPIRED]),
        guard=st.sampled_from(["none", "current", "stale"]),
    )
    def finish(self, data: st.DataObject, state: TicketState, guard: str) -> None:
        """Unguarded, or guarded by the current record or one from before a heard/left."""
        ticket = data.draw(st.sampled_from(self.tickets))
        seen = self.call("ticket", ticket.ticket_id)
        if guard == "none" or seen is None:
            done = self.call("finish_ticket", ticket.ticket_id, state, "test")
        else:
            if guard == "stale":
                seen = msgspec.structs.replace(seen, seen_at=(seen.seen_at or 0.0) - 1.0)
            done = self.call("finish_ticket", ticket.ticket_id, state, "test", if_unchanged=seen)
            if guard == "stale":
                assert not done
        if done:
            event("finished a ticket")
        self.call("ticket", ticket.ticket_id)
        self.call("position", ticket.ticket_id)

    # --- invariants, on each backend --------------------------------------------------

    @invariant()
    def listings_agree(self) -> None:
        self.call("hosts")
        self.call("slots", ordered=False)
        self.call("sessions", ordered=False)
        self.call("queues", ordered=False)

    @invariant()
    def one_live_session_per_slot_and_slots_follow_sessions(self) -> None:
        for store in self.stores:
            sessions = self._run(store.sessions())
            slots = {s.slot_id: s for s in self._run(store.slots())}
            per_slot = collections.Counter(s.slot_id for s in sessions)
            assert all(n == 1 for n in per_slot.values()), per_slot
            for s in sessions:
                slot = slots.get(s.slot_id)
                assert slot is not None and slot.state is SlotState.ASSIGNED and slot.session_id == s.session_id
            live = {s.session_id for s in sessions}
            for slot in slots.values():
                if slot.state is SlotState.ASSIGNED:
                    assert slot.session_id in live

    @invariant()
    def slot_count_is_the_slots_of_live_hosts(self) -> None:
        for store in self.stores:
            hosts: dict[str, Host] = {h.host_id: h for h in self._run(store.hosts())}
            slots = self._run(store.slots())
            for tenant in TENANTS:
                for app in APPS:
                    want = sum(s.tenant == tenant and s.app == app and not hosts[s.host_id].dead for s in slots)
                    assert self._run(store.slot_count(tenant, app)) == want, (tenant, app)

    @invariant()
    def redis_placement_indexes_hold_exactly_the_claimable_slots(self) -> None:
        """The Redis store places over score indexes; a slot missing from them would
        never be allocated, one too many would be refused at the claim."""
        from matchmaker.placement import load_pct
        from matchmaker.store_redis import RedisStore

        for store in self.stores:
            if not isinstance(store, RedisStore):
                continue
            for tenant in TENANTS:
                for app in APPS:
                    ready = self._claimable(store, tenant, app)
                    want = {s.slot_id: float(load_pct(s)) for s in ready}
                    assert self._run(placement_index(store, tenant, app)) == want, (tenant, app)
                    free = collections.Counter(s.host_id for s in ready)
                    got = self._run(placement_index(store, tenant, app, "fh"))
                    assert got == {h: float(n) for h, n in free.items()}, (tenant, app)
                    for region in {s.region for s in ready}:
                        members = set(self._run(placement_index(store, tenant, app, "rz", region)))
                        assert members == {s.slot_id for s in ready if s.region == region}

    @invariant()
    def one_waiting_ticket_per_client_key(self) -> None:
        for store in self.stores:
            keys = collections.Counter(
                (t.request.tenant, t.request.app, t.request.client_key)
                for tenant, app, length in self._run(store.queues())
                for t in self._run(store.waiting(tenant, app, length))
                if t.request.client_key
            )
            assert all(n == 1 for n in keys.values()), keys

    @invariant()
    def due_sessions_are_exactly_the_due_endings(self) -> None:
        for store in self.stores:
            sessions = self._run(store.sessions())
            for rules in DUE_RULES:
                for dt in DUE_AT:
                    now = self.now + dt
                    want = {sid for sid, _ in due_endings(sessions, now, **rules)}
                    got = [s.session_id for s in self._run(store.due_sessions(now, limit=50, **rules))]
                    assert len(got) == len(want) and set(got) == want, (now, rules, got, want)
                    if len(want) > 1:
                        event("several sessions due")
            few = self._run(store.due_sessions(self.now + DUE_AT[-1], limit=1, **DUE_RULES[0]))
            assert len(few) == min(1, len(sessions))  # everything is past its max length then

    @invariant()
    def queue_positions_are_one_to_n(self) -> None:
        for store in self.stores:
            for tenant, app, length in self._run(store.queues()):
                waiting = self._run(store.waiting(tenant, app, length + 5))
                assert len(waiting) == length
                for i, ticket in enumerate(waiting, 1):
                    assert ticket.state is TicketState.WAITING
                    assert (ticket.request.tenant, ticket.request.app) == (tenant, app)
                    assert self._run(store.position(ticket.ticket_id)) == i


@pytest.mark.parametrize(
    "backends",
    [("memory",), ("memory", "redis"), ("memory", "redis-cluster")],
    ids=["memory", "memory+redis", "memory+redis-cluster"],
)
def test_allocator_state_machine(backends: tuple[str, ...], request: pytest.FixtureRequest) -> None:
    urls = {"redis": "redis_url", "redis-cluster": "redis_cluster_url"}
    machine = type(
        "Machine",
        (AllocatorMachine,),
        {"backends": backends, "urls": {b: request.getfixturevalue(urls[b]) for b in backends if b in urls}},
    )
    examples = {"memory": 150, "memory+redis": 60, "memory+redis-cluster": 15}["+".join(backends)]
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=40,
            deadline=None,
            # Fixed examples: the race rule's winners depend on timing, and a run that draws
            # from a pool shaped by them cannot be replayed (hypothesis then reports its own
            # flakiness instead of the failure); one intermittent failure of this kind was seen
            # on memory+redis in CI and is left to be found with derandomize=False locally.
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            # No explain phase: on Python 3.11 it traces every line of a failing example and
            # runs into the test timeout, hiding the failure behind a Timeout.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        ),
    )
