"""One conformance suite for every matchmaker store: memory and a real Redis."""

from __future__ import annotations

import asyncio
import math
import uuid

import pytest

from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
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
from matchmaker.store import HostConflict, NoClaim, QueueFull, Returning, Store, UnknownHost
from matchmaker.store_redis import RedisStore
from matchmaker.timeouts import due_endings
from tests.support.redis_peek import indexed_slots

pytestmark = pytest.mark.integration


def registration(
    host: str = "h1", boot: str = "b1", slots: int = 2, tenant: str = "acme", app: str = "game", region: str = "eu"
) -> HostRegistration:
    return HostRegistration(
        host_id=host,
        boot_id=boot,
        region=region,
        gpu_model="A10G",
        signaling_url="ws://127.0.0.1:80",
        slots=[SlotSpec(index=i, tenant=tenant, app=app, streamer_id=f"{host}-{i}") for i in range(slots)],
    )


def beat(
    boot: str = "b1",
    states: dict[int, SlotState] | None = None,
    reset_for: dict[int, str] | None = None,
    load: float = 0.0,
) -> Heartbeat:
    states = states or {0: SlotState.READY, 1: SlotState.READY}
    return Heartbeat(
        boot_id=boot,
        slots=[
            SlotReport(index=i, state=st, nvenc_load=load, reset_for=(reset_for or {}).get(i))
            for i, st in states.items()
        ],
    )


def new_id() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"


async def try_claim(
    store: Store,
    *,
    client_key: str | None = None,
    tenant: str = "acme",
    app: str = "game",
    now: float = 100.0,
    ticket_id: str | None = None,
    sid: str | None = None,
) -> Session | Returning | NoClaim:
    """A new session through the public place-and-claim (``allocate``)."""
    request = AllocationRequest(tenant=tenant, app=app, client_key=client_key)
    return await store.allocate(request, sid or new_id(), now, policy="spread", ticket_id=ticket_id)


async def claim(store: Store, **kw: object) -> Session:
    """``try_claim`` that must claim a slot."""
    got = await try_claim(store, **kw)  # type: ignore[arg-type]
    assert isinstance(got, Session), got
    return got


async def claimable_slots(store: Store, tenant: str = "acme", app: str = "game") -> list[Slot]:
    """The slots ``allocate`` may claim, by slot id: READY on a live, non-draining host (from the listings)."""
    hosts = {h.host_id: h for h in await store.hosts()}
    return sorted(
        (
            s
            for s in await store.slots()
            if s.tenant == tenant
            and s.app == app
            and s.state is SlotState.READY
            and not hosts[s.host_id].dead
            and not hosts[s.host_id].draining
        ),
        key=lambda s: s.slot_id,
    )


async def claimable(store: Store, tenant: str = "acme", app: str = "game") -> list[str]:
    """The sorted ids of ``claimable_slots``; on Redis the placement index allocate reads
    must hold exactly those."""
    ids = [s.slot_id for s in await claimable_slots(store, tenant, app)]
    if isinstance(store, RedisStore):
        assert await indexed_slots(store, tenant, app) == ids
    return ids


def index_of(session: Session) -> int:
    return int(session.slot_id.rsplit("/", 1)[1])


async def ready_host(store: Store, **kw: object) -> None:
    await store.register_host(registration(**kw), 100.0)  # type: ignore[arg-type]
    await store.heartbeat(str(kw.get("host", "h1")), beat(str(kw.get("boot", "b1"))), 100.0)


async def test_registered_slots_start_cold_and_warm_on_heartbeat(store: Store) -> None:
    host = await store.register_host(registration(), 100.0)
    assert host.slot_ids == ["h1/0", "h1/1"]
    assert await claimable(store) == []
    assert await try_claim(store) is NoClaim.NO_SLOT
    assert await store.serves("acme", "game") and not await store.serves("acme", "other")
    await store.heartbeat("h1", beat(), 101.0)
    assert await claimable(store) == ["h1/0", "h1/1"]
    assert await claimable(store, tenant="other-tenant") == []
    assert await try_claim(store, tenant="other-tenant") is NoClaim.UNKNOWN_APP


async def test_registration_is_idempotent_and_refuses_twins(store: Store) -> None:
    await store.register_host(registration(), 100.0)
    await store.register_host(registration(), 101.0)
    with pytest.raises(HostConflict):
        await store.register_host(registration(boot="b2"), 102.0)
    with pytest.raises(HostConflict):
        await store.heartbeat("h1", beat(boot="b2"), 102.0)


async def test_heartbeat_for_unknown_host(store: Store) -> None:
    with pytest.raises(UnknownHost):
        await store.heartbeat("ghost", beat(), 100.0)
    with pytest.raises(UnknownHost):
        await store.set_draining("ghost", True)


async def test_a_claimed_slot_is_never_claimed_again(store: Store) -> None:
    await ready_host(store)
    first = await claim(store)
    assert await claimable(store) == sorted({"h1/0", "h1/1"} - {first.slot_id})
    second = await claim(store, now=101.0)
    assert {first.slot_id, second.slot_id} == {"h1/0", "h1/1"}
    lost = new_id()
    assert await try_claim(store, sid=lost, now=102.0) is NoClaim.NO_SLOT
    assert await store.session(lost) is None
    slots = {s.slot_id: s for s in await store.slots()}
    for s in (first, second):
        assert slots[s.slot_id].state is SlotState.ASSIGNED and slots[s.slot_id].session_id == s.session_id
        assert (s.tenant, s.app, s.host_id, s.region, s.streamer_id) == (
            "acme",
            "game",
            "h1",
            "eu",
            s.slot_id.replace("/", "-"),
        )
    assert await claimable(store) == []
    assert (await store.session(first.session_id)) == first
    assert sorted(x.session_id for x in await store.sessions()) == sorted([first.session_id, second.session_id])


async def test_concurrent_claims_give_a_slot_to_one_session(store: Store) -> None:
    await ready_host(store, slots=1)
    await store.heartbeat("h1", beat(states={0: SlotState.READY}), 100.0)
    results = await asyncio.gather(*(try_claim(store) for _ in range(50)))
    won = [r for r in results if isinstance(r, Session)]
    assert len(won) == 1 and won[0].slot_id == "h1/0"
    assert results.count(NoClaim.NO_SLOT) == 49
    assert [s.session_id for s in await store.sessions()] == [won[0].session_id]


async def test_concurrent_claims_give_each_slot_to_one_session(store: Store) -> None:
    await store.register_host(registration(slots=4), 100.0)
    await store.heartbeat("h1", beat(states={i: SlotState.READY for i in range(4)}), 100.0)
    results = await asyncio.gather(*(try_claim(store) for _ in range(30)))
    won = [r for r in results if isinstance(r, Session)]
    assert sorted(s.slot_id for s in won) == ["h1/0", "h1/1", "h1/2", "h1/3"]
    assert results.count(NoClaim.NO_SLOT) == 26
    assert sorted((s.slot_id, s.session_id) for s in await store.sessions()) == sorted(
        (s.slot_id, s.session_id) for s in won
    )


async def test_session_lifecycle_and_reset_handshake(store: Store) -> None:
    await ready_host(store)
    s = await claim(store, client_key="alice")
    other = "h1/1" if s.slot_id == "h1/0" else "h1/0"
    assert (await store.mark_connected(s.session_id, 110.0)).state is SessionState.CONNECTED  # type: ignore[union-attr]
    assert (await store.mark_disconnected(s.session_id, 120.0)).state is SessionState.DISCONNECTED  # type: ignore[union-attr]
    assert await try_claim(store, client_key="alice", now=121.0) == Returning(s.session_id)  # its live session
    assert (await store.reattach(s.session_id, 125.0)).state is SessionState.ASSIGNED  # type: ignore[union-attr]
    ended = await store.end_session(s.session_id, EndReason.PLAYER_LEFT, 130.0)
    assert ended is not None and ended.state is SessionState.ENDED and ended.end_reason is EndReason.PLAYER_LEFT
    assert ended.ended_at == 130.0 and ended.connected_at == 110.0
    assert await store.end_session(s.session_id, EndReason.PLAYER_LEFT, 131.0) is None  # exactly once
    assert await store.session(s.session_id) is None
    assert await store.mark_connected(s.session_id, 132.0) is None
    # The slot is resetting; a stale READY report does not bring it back ...
    _, reply = await store.heartbeat("h1", beat(), 133.0)
    assert [(r.index, r.session_id) for r in reply.reset] == [(index_of(s), s.session_id)]
    assert await claimable(store) == [other]
    # ... the agent's report of the reset for that session does.
    _, reply = await store.heartbeat("h1", beat(reset_for={index_of(s): s.session_id}), 134.0)
    assert reply.reset == []
    assert await claimable(store) == ["h1/0", "h1/1"]
    # The ended session no longer answers for its client: the key gets a new session.
    again = await claim(store, client_key="alice", now=135.0)
    assert again.session_id != s.session_id


async def test_slot_failure_ends_its_session(store: Store) -> None:
    await ready_host(store)
    s = await claim(store)
    i = index_of(s)
    ended, _ = await store.heartbeat("h1", beat(states={i: SlotState.DEAD, 1 - i: SlotState.READY}), 110.0)
    assert [(e.session_id, e.end_reason) for e in ended] == [(s.session_id, EndReason.SLOT_FAILED)]
    assert await claimable(store) == [f"h1/{1 - i}"]


async def test_dead_host_leaves_pool_and_ends_sessions(store: Store) -> None:
    await ready_host(store)
    s = await claim(store)  # on h1: the only host yet
    await ready_host(store, host="h2", boot="c1")
    await store.heartbeat("h2", beat(boot="c1"), 120.0)
    ended = await store.expire_hosts(121.0, ttl_s=10.0)
    assert [(e.session_id, e.end_reason) for e in ended] == [(s.session_id, EndReason.HOST_DEAD)]
    assert await claimable(store) == ["h2/0", "h2/1"]
    assert await store.expire_hosts(122.0, ttl_s=10.0) == []
    with pytest.raises(UnknownHost):
        await store.heartbeat("h1", beat(), 123.0)
    # The agent comes back with a new boot: fresh, cold slots.
    await store.register_host(registration(boot="b2"), 124.0)
    await store.heartbeat("h1", beat(boot="b2"), 125.0)
    assert await claimable(store) == ["h1/0", "h1/1", "h2/0", "h2/1"]


async def test_draining_host_takes_no_new_sessions(store: Store) -> None:
    await ready_host(store)
    host = await store.set_draining("h1", True)
    assert host.draining
    assert await claimable(store) == []
    assert await try_claim(store) is NoClaim.NO_SLOT
    _, reply = await store.heartbeat("h1", beat(), 101.0)
    assert reply.draining
    assert await try_claim(store) is NoClaim.NO_SLOT
    await store.set_draining("h1", False)
    assert await claimable(store) == ["h1/0", "h1/1"]
    assert isinstance(await try_claim(store), Session)


def ticket(tenant: str = "acme", app: str = "game", at: float = 100.0, client: str | None = None) -> Ticket:
    return Ticket(
        ticket_id=f"t-{uuid.uuid4().hex[:8]}",
        request=AllocationRequest(tenant=tenant, app=app, client_key=client),
        enqueued_at=at,
        seen_at=at,
    )


async def test_queue_is_fifo_per_tenant_and_app_with_a_limit(store: Store) -> None:
    a, b, c = ticket(), ticket(), ticket()
    other = ticket(tenant="beta")
    assert [await store.enqueue(t, max_length=2) for t in (a, b)] == [(a, 1), (b, 2)]
    with pytest.raises(QueueFull):
        await store.enqueue(c, max_length=2)
    assert await store.enqueue(other, max_length=2) == (other, 1)
    assert [t.ticket_id for t in await store.waiting("acme", "game", 10)] == [a.ticket_id, b.ticket_id]
    assert sorted(await store.queues()) == [("acme", "game", 2), ("beta", "game", 1)]
    assert await store.position(b.ticket_id) == 2
    assert await store.finish_ticket(a.ticket_id, TicketState.CANCELLED, "bye")
    assert not await store.finish_ticket(a.ticket_id, TicketState.EXPIRED, "again")
    assert await store.position(b.ticket_id) == 1
    assert await store.position(a.ticket_id) is None
    assert (await store.ticket(a.ticket_id)).state is TicketState.CANCELLED  # type: ignore[union-attr]


async def test_a_client_key_gets_its_waiting_ticket_back_in_place(store: Store) -> None:
    a, b = ticket(client="alice"), ticket(client="bob", at=101.0)
    await store.enqueue(a, 2)
    await store.enqueue(b, 2)
    assert await store.ticket_left(a.ticket_id, 105.0)
    # A reload: the same key asks again (the queue is full, yet nothing is appended).
    again = ticket(client="alice", at=107.25)
    mine, place = await store.enqueue(again, 2)
    assert (mine.ticket_id, place) == (a.ticket_id, 1)
    assert (mine.seen_at, mine.left_at, mine.enqueued_at) == (107.25, None, 100.0)
    assert await store.ticket(a.ticket_id) == mine
    assert await store.ticket(again.ticket_id) is None
    assert [t.ticket_id for t in await store.waiting("acme", "game", 10)] == [a.ticket_id, b.ticket_id]
    # The key is per tenant and app: elsewhere it is a new ticket, and each comes back.
    for elsewhere in (ticket(tenant="beta", client="alice"), ticket(app="other", client="alice")):
        assert await store.enqueue(elsewhere, 2) == (elsewhere, 1)
    mine, place = await store.enqueue(ticket(client="alice", at=108.0), 2)
    assert (mine.ticket_id, place, mine.seen_at) == (a.ticket_id, 1, 108.0)
    mine, place = await store.enqueue(ticket(app="other", client="alice", at=109.0), 2)
    assert (mine.request.app, place, mine.seen_at) == ("other", 1, 109.0)
    # Without a key, every ticket is a new one.
    x, y = ticket(tenant="gamma"), ticket(tenant="gamma")
    assert [(await store.enqueue(t, 5))[1] for t in (x, y)] == [1, 2]


async def test_a_ticket_that_left_the_queue_frees_its_key(store: Store) -> None:
    await ready_host(store)
    served, cancelled = ticket(client="alice"), ticket(client="bob")
    await store.enqueue(served, 10)
    await store.enqueue(cancelled, 10)
    await claim(store, ticket_id=served.ticket_id)
    assert await store.finish_ticket(cancelled.ticket_id, TicketState.CANCELLED, "bye")
    for key in ("alice", "bob"):
        fresh = ticket(client=key, at=120.0)
        assert await store.enqueue(fresh, 10) == (fresh, 1 if key == "alice" else 2)


async def test_heard_and_left_mark_only_waiting_tickets(store: Store) -> None:
    t = ticket(client="alice", at=1712345678.1234567)
    await store.enqueue(t, 10)
    assert await store.ticket_left(t.ticket_id, 1712345680.5000001)
    assert await store.ticket_left(t.ticket_id, 1712345681.0)  # still left since the first time
    got = await store.ticket(t.ticket_id)
    assert got is not None and (got.seen_at, got.left_at) == (1712345678.1234567, 1712345680.5000001)
    assert await store.ticket_heard(t.ticket_id, 1712345682.7777777)
    got = await store.ticket(t.ticket_id)
    assert got is not None and (got.seen_at, got.left_at) == (1712345682.7777777, None)
    assert await store.position(t.ticket_id) == 1
    assert await store.finish_ticket(t.ticket_id, TicketState.CANCELLED, "bye")
    assert not await store.ticket_heard(t.ticket_id, 1712345690.0)
    assert not await store.ticket_left(t.ticket_id, 1712345690.0)
    assert not await store.ticket_heard("t-nope", 1.0) and not await store.ticket_left("t-nope", 1.0)
    assert (await store.ticket(t.ticket_id)).seen_at == 1712345682.7777777  # type: ignore[union-attr]


async def test_a_left_ticket_takes_no_slot_until_heard_again(store: Store) -> None:
    await ready_host(store)
    t = ticket(client="alice")
    await store.enqueue(t, 10)
    await store.ticket_left(t.ticket_id, 101.0)
    assert await try_claim(store, ticket_id=t.ticket_id) is NoClaim.REFUSED
    assert await claimable(store) == ["h1/0", "h1/1"] and await store.sessions() == []
    assert await store.position(t.ticket_id) == 1
    await store.ticket_heard(t.ticket_id, 102.0)
    s = await claim(store, ticket_id=t.ticket_id)
    assert (await store.ticket(t.ticket_id)).session_id == s.session_id  # type: ignore[union-attr]


async def test_finish_if_unchanged_spares_a_client_heard_since(store: Store) -> None:
    t = ticket(client="alice", at=1712345678.1234567)
    await store.enqueue(t, 10)
    [listed] = await store.waiting("acme", "game", 10)
    await store.ticket_heard(t.ticket_id, 1712345679.0000001)
    assert not await store.finish_ticket(t.ticket_id, TicketState.CANCELLED, "gone", if_unchanged=listed)
    [listed] = await store.waiting("acme", "game", 10)
    await store.ticket_left(t.ticket_id, 1712345680.0)
    assert not await store.finish_ticket(t.ticket_id, TicketState.CANCELLED, "gone", if_unchanged=listed)
    assert await store.position(t.ticket_id) == 1
    [listed] = await store.waiting("acme", "game", 10)
    assert await store.finish_ticket(t.ticket_id, TicketState.CANCELLED, "gone", if_unchanged=listed)
    done = await store.ticket(t.ticket_id)
    assert done is not None and (done.state, done.reason) == (TicketState.CANCELLED, "gone")
    assert not await store.finish_ticket(t.ticket_id, TicketState.CANCELLED, "again", if_unchanged=done)


async def test_claim_with_ticket_serves_it_atomically(store: Store) -> None:
    await ready_host(store)
    t = ticket()
    await store.enqueue(t, 10)
    s = await claim(store, ticket_id=t.ticket_id)
    served = await store.ticket(t.ticket_id)
    assert served is not None and served.state is TicketState.SERVED and served.session_id == s.session_id
    assert await store.waiting("acme", "game", 10) == [] and await store.queues() == []
    # A ticket that already left the queue cannot take a slot.
    assert await try_claim(store, ticket_id=t.ticket_id) is NoClaim.REFUSED
    assert len(await claimable(store)) == 1
    assert [x.session_id for x in await store.sessions()] == [s.session_id]


async def test_listings(store: Store) -> None:
    await ready_host(store)
    s = await claim(store)
    assert [h.host_id for h in await store.hosts()] == ["h1"]
    assert sorted(x.slot_id for x in await store.slots()) == ["h1/0", "h1/1"]
    assert [x.session_id for x in await store.sessions()] == [s.session_id]


async def test_claim_refuses_a_session_or_ticket_of_another_tenant_or_app(store: Store) -> None:
    await ready_host(store)
    assert await try_claim(store, tenant="beta") is NoClaim.UNKNOWN_APP
    assert await try_claim(store, app="other") is NoClaim.UNKNOWN_APP
    for foreign in (ticket(tenant="beta"), ticket(app="other")):
        await store.enqueue(foreign, 10)
        assert await try_claim(store, ticket_id=foreign.ticket_id) is NoClaim.REFUSED
        assert await store.position(foreign.ticket_id) == 1
    assert await claimable(store) == ["h1/0", "h1/1"]
    assert await store.sessions() == []


async def test_ending_an_old_session_keeps_the_clients_newer_one(store: Store) -> None:
    await ready_host(store)
    old = await claim(store, client_key="alice")
    # A second session for the same key: served from the queue (a ticket's claim does not
    # look for the client's live session).
    queued = ticket(client="alice")
    await store.enqueue(queued, 10)
    new = await claim(store, client_key="alice", ticket_id=queued.ticket_id)
    assert await try_claim(store, client_key="alice") == Returning(new.session_id)
    await store.end_session(old.session_id, EndReason.PLAYER_LEFT, 110.0)
    assert await try_claim(store, client_key="alice") == Returning(new.session_id)


async def test_times_and_loads_keep_every_digit(store: Store) -> None:
    await store.register_host(registration(), 1712345678.1234567)
    _, _ = await store.heartbeat("h1", beat(load=0.123456789012345678), 1712345679.9876543)
    [slot, _] = sorted(await store.slots(), key=lambda s: s.slot_id)
    assert slot.nvenc_load == 0.123456789012345678
    [host] = await store.hosts()
    assert host.last_heartbeat == 1712345679.9876543
    s = await claim(store, now=1712345680.000001)
    connected = await store.mark_connected(s.session_id, 1712345681.1111111)
    assert connected is not None and connected.connected_at == 1712345681.1111111
    assert connected.created_at == 1712345680.000001
    ended = await store.end_session(s.session_id, EndReason.PLAYER_LEFT, 1712345690.3333333)
    assert ended is not None and ended.ended_at == 1712345690.3333333
    assert ended.last_activity == 1712345681.1111111


async def test_a_timeout_verdict_on_a_stale_record_does_not_end_the_session(store: Store) -> None:
    await ready_host(store)
    s = await claim(store)
    stale = await store.session(s.session_id)
    assert stale is not None
    await store.mark_connected(s.session_id, 105.0)  # the player connected after the listing
    assert await store.end_session(s.session_id, EndReason.NEVER_CONNECTED, 106.0, if_unchanged=stale) is None
    live = await store.session(s.session_id)
    assert live is not None and live.state is SessionState.CONNECTED
    await store.mark_disconnected(s.session_id, 110.0)
    gone = await store.session(s.session_id)
    await store.reattach(s.session_id, 111.0)  # came back within grace
    assert await store.end_session(s.session_id, EndReason.PLAYER_LEFT, 112.0, if_unchanged=gone) is None
    current = await store.session(s.session_id)
    ended = await store.end_session(s.session_id, EndReason.NEVER_CONNECTED, 113.0, if_unchanged=current)
    assert ended is not None and ended.end_reason is EndReason.NEVER_CONNECTED


async def test_an_unchanged_record_at_epoch_times_is_ended(store: Store) -> None:
    """Real clocks have 16-17 significant digits; the guard must compare them exactly."""
    t = 1795815312.123456
    await store.register_host(registration(), t)
    await store.heartbeat("h1", beat(), t)
    s = await claim(store, now=t)
    await store.mark_connected(s.session_id, t + 1.000001)
    await store.mark_disconnected(s.session_id, t + 2.000003)
    seen = await store.session(s.session_id)
    ended = await store.end_session(s.session_id, EndReason.PLAYER_LEFT, t + 40.5, if_unchanged=seen)
    assert ended is not None and ended.end_reason is EndReason.PLAYER_LEFT


# --- due_sessions: the sweep's read, checked against due_endings on the same records -----

EPOCH = 1_800_000_000.123456
RULES = {"connect_timeout_s": 60.0, "reconnect_grace_s": 30.0, "idle_timeout_s": 300.0, "max_session_s": 3600.0}
OFF = {"connect_timeout_s": 0.0, "reconnect_grace_s": 0.0, "idle_timeout_s": 0.0, "max_session_s": 0.0}


async def due(
    store: Store, now: float, limit: int = 100, rules: dict[str, float] | None = None
) -> dict[str, EndReason]:
    """The ids due_sessions returns (RULES, changed by ``rules``), with due_endings' verdict
    on each; asserts that they are exactly the ids due_endings finds among all live sessions."""
    rules = {**RULES, **(rules or {})}
    got = await store.due_sessions(now, limit=limit, **rules)
    want = dict(due_endings(await store.sessions(), now, **rules))
    ids = [s.session_id for s in got]
    assert len(ids) == len(set(ids)) == min(limit, len(want)), (ids, want)
    assert set(ids) <= set(want), (ids, want)
    return {sid: want[sid] for sid in ids}


async def test_due_sessions_follow_each_rule_and_transition(store: Store) -> None:
    t = EPOCH
    await store.register_host(registration(slots=4), t)
    await store.heartbeat("h1", beat(states={i: SlotState.READY for i in range(4)}), t)
    a, b, c = [await claim(store, now=t + i * 0.01) for i in range(3)]
    assert await due(store, t + 60.0) == {}
    assert await due(store, t + 60.005) == {a.session_id: EndReason.NEVER_CONNECTED}
    await store.mark_connected(a.session_id, t + 10.25)  # a: idle counts from here
    await store.mark_connected(b.session_id, t + 10.5)
    await store.mark_disconnected(b.session_id, t + 20.75)  # b: the grace counts from here
    await store.touch(c.session_id, t + 30.125)  # c: still never connected, later
    assert await due(store, t + 50.75) == {}
    assert await due(store, t + 50.76) == {b.session_id: EndReason.PLAYER_LEFT}
    assert await due(store, t + 90.2) == {b.session_id: EndReason.PLAYER_LEFT, c.session_id: EndReason.NEVER_CONNECTED}
    await store.reattach(b.session_id, t + 45.0)  # b is back: assigned, connect timeout from here
    assert await due(store, t + 105.0) == {c.session_id: EndReason.NEVER_CONNECTED}
    assert await due(store, t + 105.1) == {
        b.session_id: EndReason.NEVER_CONNECTED,
        c.session_id: EndReason.NEVER_CONNECTED,
    }
    await store.touch(a.session_id, t + 200.0)
    assert set(await due(store, t + 500.0)) == {b.session_id, c.session_id}
    assert await due(store, t + 500.1) == {
        a.session_id: EndReason.IDLE,
        b.session_id: EndReason.NEVER_CONNECTED,
        c.session_id: EndReason.NEVER_CONNECTED,
    }
    # Timeouts of 0 are off; a grace of 0 is not: a disconnected player is due at once.
    assert await due(store, t + 500.1, rules=OFF) == {}
    await store.mark_connected(c.session_id, t + 501.0)
    await store.mark_disconnected(c.session_id, t + 502.0)
    assert await due(store, t + 502.0, rules=OFF) == {}
    assert await due(store, t + 502.000001, rules=OFF) == {c.session_id: EndReason.PLAYER_LEFT}
    only_max = {"connect_timeout_s": 0.0, "reconnect_grace_s": 1e9, "idle_timeout_s": 0.0}
    assert await due(store, t + 3600.0, rules=only_max) == {}
    assert set(await due(store, t + 3600.025, rules=only_max)) == {a.session_id, b.session_id, c.session_id}
    # Ended sessions are never due, however they ended.
    await store.end_session(a.session_id, EndReason.FORCE_ENDED, t + 600.0)
    assert set(await due(store, t + 5000.0)) == {b.session_id, c.session_id}


async def test_due_sessions_drop_sessions_ended_by_host_death_and_slot_failure(store: Store) -> None:
    t = EPOCH
    await ready_host(store, slots=2)
    await ready_host(store, host="h2", boot="c1")
    await store.heartbeat("h1", beat(), t)
    await store.heartbeat("h2", beat(boot="c1"), t)
    on = {s.slot_id: s for s in [await claim(store, now=t) for _ in range(4)]}
    sessions = [on[slot] for slot in ("h1/0", "h1/1", "h2/0", "h2/1")]
    assert len(await due(store, t + 61.0)) == 4
    failed, _ = await store.heartbeat("h1", beat(states={0: SlotState.DEAD, 1: SlotState.READY}), t + 1.0)
    assert [x.session_id for x in failed] == [sessions[0].session_id]
    await store.heartbeat("h1", beat(states={0: SlotState.DEAD, 1: SlotState.READY}), t + 20.0)
    gone = await store.expire_hosts(t + 20.0, ttl_s=10.0)  # h2 is silent
    assert {x.session_id for x in gone} == {sessions[2].session_id, sessions[3].session_id}
    assert set(await due(store, t + 61.0)) == {sessions[1].session_id}


async def test_due_sessions_respect_the_limit_most_overdue_first(store: Store) -> None:
    t = EPOCH
    await store.register_host(registration(slots=6), t)
    await store.heartbeat("h1", beat(states={i: SlotState.READY for i in range(6)}), t)
    await ready_host(store, host="h2", boot="c1", tenant="beta")
    await store.heartbeat("h2", beat(boot="c1"), t)
    older = [await claim(store, now=t + i) for i in range(6)]
    beta = await claim(store, tenant="beta", now=t + 2.5)
    now = t + 70.0  # h1/0..5 are 10..5 s overdue, beta 7.5 s
    assert await store.due_sessions(now, limit=0, **RULES) == []
    first = [s.session_id for s in await store.due_sessions(now, limit=3, **RULES)]
    assert first == [older[0].session_id, older[1].session_id, older[2].session_id]
    assert list(await due(store, now, limit=4)) == [*first, beta.session_id]
    assert len(await due(store, now, limit=7)) == 7
    for sid in first:  # the sweep ends what it got; the next round gets the next ones
        await store.end_session(sid, EndReason.NEVER_CONNECTED, now)
    assert list(await due(store, now, limit=2)) == [beta.session_id, older[3].session_id]


async def test_due_sessions_at_the_deadline_to_the_last_bit(store: Store) -> None:
    """Epoch times have 17 significant digits: each due_sessions answer, one double apart
    around each deadline, is exactly due_endings' (a score kept to 14 digits is not)."""
    t = 1_800_000_000.0 + 0.7654321
    await store.register_host(registration(), t)
    await store.heartbeat("h1", beat(), t)
    s, r = await claim(store, now=t), await claim(store, now=t + 0.1)
    await store.mark_connected(r.session_id, t + 1.1)
    await store.mark_disconnected(r.session_id, t + 2.3456789)
    rules = {"connect_timeout_s": 7.3, "reconnect_grace_s": 0.1, "idle_timeout_s": 0.0, "max_session_s": 0.0}
    for deadline, who in ((t + 7.3, s), (t + 2.3456789 + 0.1, r)):
        now = math.nextafter(deadline, 0.0)
        for _ in range(8):
            now = math.nextafter(now, 0.0)
        seen = []
        for _ in range(16):
            seen.append(who.session_id in await due(store, now, rules=rules))
            now = math.nextafter(now, math.inf)
        assert seen[0] is False and seen[-1] is True and seen == sorted(seen), seen


async def test_the_callers_subject_is_kept_with_its_ticket_and_session(store: Store) -> None:
    """Ownership checks (matchmaker.guard) read the subject back: both stores keep it, through
    the queue, the claim, a reattach, a connect and the end of the session."""
    await ready_host(store, slots=2)
    request = AllocationRequest(tenant="acme", app="game", client_key="k", subject="alice")
    direct = await store.allocate(request, new_id(), 100.0, policy="spread")
    assert isinstance(direct, Session) and direct.subject == "alice"
    waiting = Ticket(
        ticket_id=f"t-{uuid.uuid4().hex[:8]}",
        request=AllocationRequest(tenant="acme", app="game", subject="bob"),
        enqueued_at=100.0,
        seen_at=100.0,
    )
    await store.enqueue(waiting, 10)
    kept = await store.ticket(waiting.ticket_id)
    assert kept is not None and kept.request.subject == "bob"
    assert await store.ticket_left(waiting.ticket_id, 101.0) and await store.ticket_heard(waiting.ticket_id, 102.0)
    assert [t.request.subject for t in await store.waiting("acme", "game", 10)] == ["bob"]
    served = await store.allocate(kept.request, new_id(), 103.0, policy="spread", ticket_id=waiting.ticket_id)
    assert isinstance(served, Session) and served.subject == "bob"
    connected = await store.mark_connected(served.session_id, 104.0)
    assert connected is not None and connected.subject == "bob"
    again = await store.reattach(direct.session_id, 105.0)
    assert again is not None and again.subject == "alice"
    ended = await store.end_session(served.session_id, EndReason.PLAYER_LEFT, 106.0)
    assert ended is not None and ended.subject == "bob"
    assert {s.session_id: s.subject for s in await store.sessions()}[direct.session_id] == "alice"
