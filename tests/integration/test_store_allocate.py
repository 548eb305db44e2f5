"""``Store.allocate`` on every store: placement order, FIFO, reconnects, tickets.

The Redis store places server-side over score indexes; these tests hold it to exactly
the order ``placement.rank`` gives the memory store (pools small enough that no tie
window is cut), and to the indexes following every slot change.
"""

from __future__ import annotations

import collections
import uuid

import pytest

from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    HostRegistration,
    Session,
    Slot,
    SlotReport,
    SlotSpec,
    SlotState,
    Ticket,
    TicketState,
)
from matchmaker.placement import load_pct, rank
from matchmaker.store import NoClaim, Returning, Store
from tests.integration.test_store_conformance import claimable, claimable_slots

pytestmark = pytest.mark.integration


async def host(
    store: Store,
    host_id: str,
    *,
    slots: int = 2,
    region: str = "eu",
    gpu: str = "A10G",
    loads: dict[int, float] | None = None,
    app: str = "game",
    tenant: str = "acme",
    states: dict[int, SlotState] | None = None,
    now: float = 100.0,
) -> None:
    await store.register_host(
        HostRegistration(
            host_id=host_id,
            boot_id="b1",
            region=region,
            gpu_model=gpu,
            signaling_url="ws://127.0.0.1:80",
            slots=[SlotSpec(index=i, tenant=tenant, app=app, streamer_id=f"{host_id}-{i}") for i in range(slots)],
        ),
        now,
    )
    await beat(store, host_id, slots=slots, loads=loads, states=states, now=now)


async def beat(
    store: Store,
    host_id: str,
    *,
    slots: int = 2,
    loads: dict[int, float] | None = None,
    states: dict[int, SlotState] | None = None,
    now: float = 100.0,
) -> None:
    states = states or {}
    loads = loads or {}
    await store.heartbeat(
        host_id,
        Heartbeat(
            boot_id="b1",
            slots=[
                SlotReport(index=i, state=states.get(i, SlotState.READY), nvenc_load=loads.get(i, 0.0))
                for i in range(slots)
            ],
        ),
        now,
    )


def req(**kw: str) -> AllocationRequest:
    return AllocationRequest(tenant=kw.pop("tenant", "acme"), app=kw.pop("app", "game"), **kw)


async def take(
    store: Store, request: AllocationRequest | None = None, policy: str = "spread", now: float = 200.0
) -> Session:
    out = await store.allocate(request or req(), f"s-{uuid.uuid4().hex[:8]}", now, policy=policy)
    assert isinstance(out, Session), out
    return out


async def test_allocation_builds_the_session_from_the_slot(store: Store) -> None:
    await host(store, "h1", slots=1)
    s = await take(store, req(client_key="c1"), now=1.8e9 + 0.123456)
    assert (s.slot_id, s.host_id, s.streamer_id, s.region, s.tenant, s.app) == (
        "h1/0",
        "h1",
        "h1-0",
        "eu",
        "acme",
        "game",
    )
    assert s.client_key == "c1" and s.created_at == s.last_activity == 1.8e9 + 0.123456
    assert await store.session(s.session_id) == s
    assert [x.state for x in await store.slots()] == [SlotState.ASSIGNED]
    assert await claimable(store) == []
    assert await store.allocate(req(), "s-2", 201.0, policy="spread") is NoClaim.NO_SLOT


async def test_unknown_app_and_other_tenants_pools(store: Store) -> None:
    await host(store, "h1", slots=1)
    assert await store.allocate(req(app="nope"), "s-1", 200.0, policy="spread") is NoClaim.UNKNOWN_APP
    assert await store.allocate(req(tenant="other"), "s-2", 200.0, policy="spread") is NoClaim.UNKNOWN_APP
    assert (await take(store)).slot_id == "h1/0"


async def test_spread_takes_the_least_loaded_slot(store: Store) -> None:
    await host(store, "h1", slots=3, loads={0: 0.7, 1: 0.2, 2: 0.5})
    await host(store, "h2", slots=2, loads={0: 0.9, 1: 0.35})
    order = [(await take(store)).slot_id for _ in range(5)]
    assert order == ["h1/1", "h2/1", "h1/2", "h1/0", "h2/0"]


async def test_spread_breaks_load_ties_towards_the_host_with_most_free_slots(store: Store) -> None:
    await host(store, "h1", slots=1)
    await host(store, "h2", slots=3)
    first = await take(store)
    assert first.host_id == "h2"  # 3 free beats 1 free at equal load
    second = await take(store)
    assert second.host_id == "h2"  # 2 free beats 1
    third = {(await take(store)).host_id, (await take(store)).host_id}
    assert third == {"h1", "h2"}


async def test_a_new_load_report_moves_a_slot_in_the_order(store: Store) -> None:
    await host(store, "h1", slots=2, loads={0: 0.1, 1: 0.6})
    await beat(store, "h1", loads={0: 0.8, 1: 0.3})
    assert (await take(store)).slot_id == "h1/1"


async def test_pack_fills_the_fullest_host_first(store: Store) -> None:
    await host(store, "h1", slots=4)
    await host(store, "h2", slots=2, loads={0: 0.4, 1: 0.1})
    order = [(await take(store, policy="pack")).slot_id for _ in range(3)]
    assert order == ["h2/1", "h2/0", order[2]] and order[2].startswith("h1/")
    # h1 now has 3 free; a host with fewer comes first again.
    await host(store, "h3", slots=1)
    assert (await take(store, policy="pack")).slot_id == "h3/0"


async def test_region_is_preferred_not_required(store: Store) -> None:
    await host(store, "eu1", slots=1, region="eu", loads={0: 0.9})
    await host(store, "us1", slots=2, region="us")
    for policy in ("spread", "pack"):
        got = await take(store, req(region="eu"), policy=policy)
        assert got.slot_id == "eu1/0" if policy == "spread" else got.region == "us"
    assert (await take(store, req(region="eu"))).region == "us"  # none left in eu: another region


async def test_gpu_model_is_a_filter(store: Store) -> None:
    await host(store, "a", slots=2, gpu="A10G")
    await host(store, "l", slots=1, gpu="L4", loads={0: 0.9})
    for policy in ("spread", "pack"):
        assert await store.allocate(req(gpu_model="H100"), f"s-{policy}", 200.0, policy=policy) is NoClaim.NO_SLOT
    assert (await take(store, req(gpu_model="L4"))).slot_id == "l/0"
    assert await store.allocate(req(gpu_model="L4"), "s-x", 200.0, policy="pack") is NoClaim.NO_SLOT
    assert (await take(store, req(gpu_model="A10G"), policy="pack")).host_id == "a"


async def test_the_order_matches_placement_rank(store: Store) -> None:
    """Against the pure ranking over the claimable slots, for every policy and request shape."""
    loads = [0.05, 0.5, 0.25, 0.5, 0.95, 0.25, 0.5, 0.05, 0.25]
    load_of: dict[str, float] = {}
    for i, (region, gpu, n) in enumerate([("eu", "A10G", 2), ("us", "L4", 3), ("eu", "A10G", 4)]):
        mine = {k: loads[len(load_of) + k] for k in range(n)}
        load_of.update({f"h{i}/{k}": v for k, v in mine.items()})
        await host(store, f"h{i}", slots=n, region=region, gpu=gpu, loads=mine)
    for policy in ("spread", "pack"):
        for shape in ({}, {"region": "us"}, {"gpu_model": "A10G"}, {"region": "us", "gpu_model": "A10G"}):
            request = req(**shape)
            pool = await claimable_slots(store)
            best = best_slots(pool, request, policy)
            got = await store.allocate(request, f"s-{uuid.uuid4().hex[:6]}", 200.0, policy=policy)
            assert isinstance(got, Session) and got.slot_id in best, (policy, shape, got, best)
            # Give the slot back (end, then the agent's reset report) for the next shape.
            assert await store.end_session(got.session_id, EndReason.FORCE_ENDED, 201.0) is not None
            index = int(got.slot_id.rsplit("/", 1)[1])
            await store.heartbeat(
                got.host_id,
                Heartbeat(
                    boot_id="b1",
                    slots=[
                        SlotReport(
                            index=index,
                            state=SlotState.READY,
                            reset_for=got.session_id,
                            nvenc_load=load_of[got.slot_id],
                        )
                    ],
                ),
                202.0,
            )
            assert len(await claimable(store)) == 9


def best_slots(pool: list[Slot], request: AllocationRequest, policy: str) -> set[str]:
    """Every slot ``rank`` could put first (it breaks exact ties by chance)."""
    pool = [s for s in pool if not request.gpu_model or s.gpu_model == request.gpu_model]
    free = collections.Counter(s.host_id for s in pool)

    def key(s: Slot) -> tuple[int, ...]:
        away = 0 if not request.region or s.region == request.region else 1
        if policy == "spread":
            return (away, load_pct(s), -free[s.host_id])
        return (away, free[s.host_id], load_pct(s))

    ranked = rank(pool, request, policy)
    return {s.slot_id for s in ranked if key(s) == key(ranked[0])}


async def test_draining_dead_and_failed_slots_leave_the_index(store: Store) -> None:
    await host(store, "h1", slots=2)
    await host(store, "h2", slots=1, loads={0: 0.9})
    await store.set_draining("h1", True)
    assert (await take(store)).slot_id == "h2/0"
    assert await store.allocate(req(), "s-x", 200.0, policy="spread") is NoClaim.NO_SLOT
    await store.set_draining("h1", False)
    await beat(store, "h1", states={0: SlotState.DEAD})
    assert (await take(store)).slot_id == "h1/1"
    await host(store, "h3", slots=1, now=300.0)
    assert await store.expire_hosts(1000.0, 60.0)  # every host is silent: h1's and h2's sessions end
    assert await store.allocate(req(), "s-y", 1000.0, policy="spread") is NoClaim.NO_SLOT


async def test_a_waiting_ticket_blocks_newcomers_and_is_served_by_its_own_allocation(store: Store) -> None:
    await host(store, "h1", slots=1, states={0: SlotState.STARTING})
    ticket = Ticket(ticket_id="t-1", request=req(), enqueued_at=150.0)
    assert (await store.enqueue(ticket, 10))[1] == 1
    await beat(store, "h1", slots=1)
    assert await store.allocate(req(), "s-new", 200.0, policy="spread") is NoClaim.QUEUE_AHEAD
    served = await store.allocate(req(), "s-t", 200.0, policy="spread", ticket_id="t-1")
    assert isinstance(served, Session) and served.slot_id == "h1/0"
    t = await store.ticket("t-1")
    assert t is not None and t.state is TicketState.SERVED and t.session_id == "s-t"
    assert await store.queues() == []
    assert await store.allocate(req(), "s-t2", 200.0, policy="spread", ticket_id="t-1") is NoClaim.REFUSED
    assert await store.allocate(req(), "s-u", 200.0, policy="spread", ticket_id="t-unknown") is NoClaim.REFUSED


async def test_a_ticket_without_a_slot_stays_waiting(store: Store) -> None:
    await host(store, "h1", slots=1, states={0: SlotState.STARTING})
    await store.enqueue(Ticket(ticket_id="t-1", request=req(), enqueued_at=150.0), 10)
    assert await store.allocate(req(), "s-t", 200.0, policy="spread", ticket_id="t-1") is NoClaim.NO_SLOT
    assert await store.position("t-1") == 1
    assert await store.session("s-t") is None


async def test_a_client_with_a_live_session_is_sent_back_to_it(store: Store) -> None:
    await host(store, "h1", slots=2)
    first = await take(store, req(client_key="c1"))
    again = await store.allocate(req(client_key="c1"), "s-2", 201.0, policy="spread")
    assert again == Returning(first.session_id)
    assert isinstance(await store.allocate(req(client_key="c2"), "s-3", 201.0, policy="spread"), Session)
    await store.end_session(first.session_id, EndReason.PLAYER_LEFT, 202.0)
    assert await store.allocate(req(client_key="c1"), "s-4", 203.0, policy="spread") is NoClaim.NO_SLOT


async def test_concurrent_allocations_never_share_a_slot(store: Store) -> None:
    import asyncio

    for i in range(4):
        await host(store, f"h{i}", slots=3)
    outs = await asyncio.gather(
        *(store.allocate(req(), f"s-{k}", 200.0, policy=p) for k in range(20) for p in ("spread",))
    )
    sessions = [o for o in outs if isinstance(o, Session)]
    assert len(sessions) == 12 and len({s.slot_id for s in sessions}) == 12
    assert outs.count(NoClaim.NO_SLOT) == 8


# --- records ---------------------------------------------------------------------------


async def test_every_end_queues_its_record_until_acknowledged(store: Store) -> None:
    await host(store, "h1", slots=3)
    by_slot = {s.slot_id: s for s in [await take(store) for _ in range(3)]}
    a, b, c = by_slot["h1/0"], by_slot["h1/1"], by_slot["h1/2"]
    await store.end_session(a.session_id, EndReason.FORCE_ENDED, 300.0)
    await beat(store, "h1", slots=3, states={2: SlotState.DEAD}, now=301.0)  # c's slot fails
    assert await store.take_records(299.0, 30.0, 10) == []  # not due before its end
    first = await store.take_records(302.0, 30.0, 10)
    assert sorted((s.session_id, s.end_reason) for s in first) == sorted(
        [(a.session_id, EndReason.FORCE_ENDED), (c.session_id, EndReason.SLOT_FAILED)]
    )
    assert all(s.ended_at is not None for s in first)
    assert await store.take_records(303.0, 30.0, 10) == []  # leased: another taker gets none
    assert await store.expire_hosts(310.0, 5.0)  # b: host_dead
    [dead] = await store.take_records(311.0, 30.0, 10)
    assert (dead.session_id, dead.end_reason) == (b.session_id, EndReason.HOST_DEAD)
    await store.ack_records([dead])
    # The first batch was never acknowledged (its taker "died"): due again after the lease.
    again = await store.take_records(333.0, 30.0, 10)
    assert sorted(s.session_id for s in again) == sorted(s.session_id for s in first)
    await store.ack_records(again)
    assert await store.take_records(10_000.0, 30.0, 10) == []


async def test_records_are_taken_in_batches_by_disjoint_takers(store: Store) -> None:
    import asyncio

    await host(store, "h1", slots=6)
    for _ in range(6):
        s = await take(store)
        await store.end_session(s.session_id, EndReason.PLAYER_LEFT, 300.0)
    batches = await asyncio.gather(*(store.take_records(301.0, 30.0, 2) for _ in range(4)))
    ids = [s.session_id for batch in batches for s in batch]
    assert len(ids) == len(set(ids)) >= 2 and all(len(b) <= 2 for b in batches)


async def test_slot_count_counts_the_slots_of_live_hosts(store: Store) -> None:
    assert await store.slot_count("acme", "game") == 0
    await host(store, "h1", slots=3, states={1: SlotState.DEAD})
    await host(store, "h2", slots=2, app="other")
    await take(store)
    assert await store.slot_count("acme", "game") == 3
    assert await store.slot_count("acme", "other") == 2
    assert await store.slot_count("someone-else", "game") == 0
    await beat(store, "h2", now=990.0)
    assert await store.expire_hosts(1000.0, 60.0)  # h1 dies (its session ends), h2 lives
    assert await store.slot_count("acme", "game") == 0
    assert await store.slot_count("acme", "other") == 2
    await store.register_host(
        HostRegistration(  # back, smaller
            host_id="h1",
            boot_id="b2",
            region="eu",
            gpu_model="A10G",
            signaling_url="ws://127.0.0.1:80",
            slots=[SlotSpec(index=0, tenant="acme", app="game", streamer_id="h1-0")],
        ),
        1001.0,
    )
    assert await store.slot_count("acme", "game") == 1


async def test_random_pools_always_get_a_best_slot(store: Store) -> None:
    """Differential: random pools (regions, GPU models, loads with many ties, hosts of
    different sizes) and random requests; every allocation must be one of the slots
    ``placement.rank`` puts first. Each allocation shrinks the pool, so host fill keeps
    changing (the spread tie-break and pack order)."""
    import random

    rng = random.Random(20261127)
    for round_ in range(6):
        hosts = [f"r{round_}h{i}" for i in range(rng.randint(2, 6))]
        for h in hosts:
            n = rng.randint(1, 5)
            await host(
                store,
                h,
                slots=n,
                region=rng.choice(["eu", "us", "ap"]),
                gpu=rng.choice(["A10G", "L4"]),
                loads={k: rng.choice([0.0, 0.25, 0.5, 0.5, 0.75]) for k in range(n)},
                app=f"app{round_}",
            )
        while True:
            request = req(
                app=f"app{round_}",
                **{
                    k: v
                    for k, v in (
                        ("region", rng.choice(["", "eu", "us", "ap"])),
                        ("gpu_model", rng.choice(["", "", "A10G", "L4"])),
                    )
                    if v
                },
            )
            policy = rng.choice(["spread", "pack"])
            pool = await claimable_slots(store, app=request.app)
            if not pool:
                break
            best = best_slots(pool, request, policy)
            got = await store.allocate(request, f"s-{uuid.uuid4().hex[:8]}", 200.0, policy=policy)
            if not best:
                assert got is NoClaim.NO_SLOT, (request, got)
                continue
            assert isinstance(got, Session) and got.slot_id in best, (policy, request, got, best, pool)


# --- registry retention -----------------------------------------------------------------


async def test_dead_hosts_are_forgotten_after_the_retention(store: Store) -> None:
    await host(store, "h1", slots=2, now=100.0)
    await host(store, "h2", slots=1, app="other", now=100.0)
    session = await take(store, now=101.0)
    await beat(store, "h2", slots=1, now=150.0)
    ended = await store.expire_hosts(170.0, 60.0)  # h1 (last heard at 100) dies, h2 lives
    assert [s.session_id for s in ended] == [session.session_id]
    assert await store.forget_hosts(170.0, 3600.0) == []  # dead, but not for long
    assert {h.host_id for h in await store.hosts()} == {"h1", "h2"}
    assert await store.forget_hosts(3700.0, 3600.0) == []  # 3,600 s exactly: not longer
    assert await store.forget_hosts(3700.5, 3600.0) == ["h1"]
    assert [h.host_id for h in await store.hosts()] == ["h2"]
    assert {s.slot_id for s in await store.slots()} == {"h2/0"}
    assert not await store.serves("acme", "game") and await store.slot_count("acme", "game") == 0
    assert await store.forget_hosts(9999.0, 3600.0) == []  # h2 is alive, however long ago it beat
    # The same id later is a new host.
    await host(store, "h1", slots=1, now=4000.0)
    assert await claimable(store) == ["h1/0"]
    assert (await take(store, now=4001.0)).slot_id == "h1/0"


async def test_a_host_back_before_the_retention_is_not_forgotten(store: Store) -> None:
    await host(store, "h1", slots=1, now=100.0)
    assert await store.expire_hosts(200.0, 60.0) == []
    await store.register_host(
        HostRegistration(
            host_id="h1",
            boot_id="b2",
            region="eu",
            gpu_model="A10G",
            signaling_url="ws://127.0.0.1:80",
            slots=[SlotSpec(index=0, tenant="acme", app="game", streamer_id="h1-0")],
        ),
        300.0,
    )
    assert await store.forget_hosts(100_000.0, 3600.0) == []  # alive again: never forgotten
    assert [h.host_id for h in await store.hosts()] == ["h1"]
