"""Slots reported ``draining`` on every store (memory, Redis, Redis Cluster): the agent's
first step of a credential renewal. A READY slot reported draining leaves placement (on
Redis: the rz and fh indexes) until it is reported ready again; an ASSIGNED one keeps its
session and is named in the reply's ``busy``, so the agent does not restart it; deltas
carry the report like any state change, and an older agent's replies never carry
``busy``."""

from __future__ import annotations

import msgspec
import pytest

from matchmaker.models import (
    AllocationRequest,
    EndReason,
    GpuReport,
    Heartbeat,
    HeartbeatReply,
    HostRegistration,
    Session,
    SessionState,
    SlotReport,
    SlotSpec,
    SlotState,
)
from matchmaker.store import NoClaim, Store
from matchmaker.store_redis import RedisStore
from tests.support.redis_peek import indexed_slots, placement_index

pytestmark = pytest.mark.integration

TTL = 10.0
READY, DRAINING, STARTING, DEAD = SlotState.READY, SlotState.DRAINING, SlotState.STARTING, SlotState.DEAD


def registration(slots: int = 3) -> HostRegistration:
    return HostRegistration(
        host_id="h",
        boot_id="b1",
        region="eu",
        signaling_url="ws://127.0.0.1:80",
        slots=[SlotSpec(index=i, tenant="acme", app="game", streamer_id=f"h-{i}", gpu=0) for i in range(slots)],
    )


def report(index: int, state: SlotState = READY, reset_for: str | None = None) -> SlotReport:
    return SlotReport(index=index, state=state, reset_for=reset_for)


async def beat(store: Store, hb: Heartbeat, now: float) -> tuple[list[Session], HeartbeatReply]:
    return await store.heartbeat("h", hb, now, heartbeat_ttl_s=TTL)


def full(seq: int, *reports: SlotReport) -> Heartbeat:
    return Heartbeat(boot_id="b1", seq=seq, full=True, slots=list(reports))


def delta(seq: int, *reports: SlotReport) -> Heartbeat:
    return Heartbeat(boot_id="b1", seq=seq, full=False, slots=list(reports))


async def state_of(store: Store) -> dict[str, SlotState]:
    return {s.slot_id: s.state for s in await store.slots()}


async def claimable(store: Store) -> list[str]:
    """READY slots; on Redis also exactly what the rz index holds, and the fh index counts them."""
    ids = sorted(s.slot_id for s in await store.slots() if s.state is READY)
    if isinstance(store, RedisStore):
        assert await indexed_slots(store, "acme", "game") == ids
        assert await placement_index(store, "acme", "game", "fh") == ({"h": float(len(ids))} if ids else {})
        assert await placement_index(store, "acme", "game", "fh", "eu") == ({"h": float(len(ids))} if ids else {})
    return ids


async def claim(store: Store, now: float) -> Session | NoClaim:
    got = await store.allocate(
        AllocationRequest(tenant="acme", app="game"), f"s-{now}", now, policy="spread", heartbeat_ttl_s=TTL
    )
    assert isinstance(got, Session | NoClaim), got
    return got


async def registered(store: Store, slots: int = 3) -> None:
    await store.register_host(registration(slots), 100.0, heartbeat_ttl_s=TTL)
    _, reply = await beat(store, full(1, *(report(i) for i in range(slots))), 100.0)
    assert reply == HeartbeatReply()


async def test_a_ready_slot_reported_draining_leaves_placement_until_ready_again(store: Store) -> None:
    await registered(store)
    ended, reply = await beat(store, delta(2, report(1, DRAINING)), 101.0)
    assert ended == [] and reply == HeartbeatReply()  # acknowledged, nobody holds it: no busy
    assert b"busy" not in msgspec.json.encode(reply)
    assert await state_of(store) == {"h/0": READY, "h/1": DRAINING, "h/2": READY}
    assert await claimable(store) == ["h/0", "h/2"]
    # Nothing claims it, however many ask.
    got = [await claim(store, 102.0 + i / 10) for i in range(3)]
    assert sorted(s.slot_id for s in got if isinstance(s, Session)) == ["h/0", "h/2"]
    assert got[2] is NoClaim.NO_SLOT
    # The agent restarts it: starting, then ready, and it is placeable again.
    assert (await beat(store, delta(3, report(1, STARTING)), 103.0))[1] == HeartbeatReply()
    assert (await state_of(store))["h/1"] is STARTING
    assert (await beat(store, delta(4, report(1)), 104.0))[1] == HeartbeatReply()
    assert await claimable(store) == ["h/1"]


async def test_a_renewal_cancelled_puts_the_slot_straight_back(store: Store) -> None:
    await registered(store, slots=2)
    await beat(store, delta(2, report(0, DRAINING)), 101.0)
    assert await claimable(store) == ["h/1"]
    assert (await beat(store, delta(3, report(0)), 102.0))[1] == HeartbeatReply()
    assert await claimable(store) == ["h/0", "h/1"]
    # A draining slot that dies is dead, as from any state but assigned.
    await beat(store, delta(4, report(0, DRAINING)), 103.0)
    await beat(store, delta(5, report(0, DEAD)), 104.0)
    assert (await state_of(store))["h/0"] is DEAD


async def test_an_assigned_slot_reported_draining_keeps_its_session_and_is_busy(store: Store) -> None:
    await registered(store, slots=2)
    s = await claim(store, 101.0)
    assert isinstance(s, Session)
    index = int(s.slot_id.rsplit("/", 1)[1])
    other = 1 - index
    # The agent did not see the assignment yet and asks to drain both slots.
    ended, reply = await beat(store, delta(2, report(other, DRAINING), report(index, DRAINING)), 102.0)
    assert ended == []
    assert reply.busy == [index] and reply.reset == []
    assert await state_of(store) == {s.slot_id: SlotState.ASSIGNED, f"h/{other}": DRAINING}
    live = await store.session(s.session_id)
    assert live is not None and live.state is SessionState.ASSIGNED
    assert await claimable(store) == []
    # Reported ready again (the renewal cancelled): still assigned, the session untouched.
    _, reply = await beat(store, delta(3, report(index)), 103.0)
    assert reply == HeartbeatReply()
    assert (await state_of(store))[s.slot_id] is SlotState.ASSIGNED
    assert (await store.mark_connected(s.session_id, 104.0)) is not None
    # A repeated draining report while the session lasts is busy again, every time.
    assert (await beat(store, full(4, report(index, DRAINING), report(other, DRAINING)), 105.0))[1].busy == [index]
    # Once the session ends the slot is resetting: a draining report does not skip the reset.
    await store.end_session(s.session_id, EndReason.PLAYER_LEFT, 106.0)
    _, reply = await beat(store, delta(5, report(index, DRAINING)), 107.0)
    assert reply.busy is msgspec.UNSET
    assert [(r.index, r.session_id) for r in reply.reset] == [(index, s.session_id)]
    assert (await state_of(store))[s.slot_id] is SlotState.RESETTING
    _, reply = await beat(store, delta(6, report(index, reset_for=s.session_id), report(other)), 108.0)
    assert reply == HeartbeatReply()
    assert await claimable(store) == ["h/0", "h/1"]


async def test_a_draining_report_that_does_not_apply_is_not_acknowledged(store: Store) -> None:
    """Out of sequence: no slot changes, no busy, a snapshot asked; the full heartbeat the
    agent sends next carries the draining report again."""
    await registered(store, slots=2)
    s = await claim(store, 101.0)
    assert isinstance(s, Session)
    index = int(s.slot_id.rsplit("/", 1)[1])
    _, reply = await beat(store, delta(4, report(0, DRAINING), report(1, DRAINING)), 102.0)
    assert reply.snapshot is True and reply.busy is msgspec.UNSET
    assert (await state_of(store))[f"h/{1 - index}"] is READY
    _, reply = await beat(store, full(5, report(0, DRAINING), report(1, DRAINING)), 103.0)
    assert reply.snapshot is msgspec.UNSET and reply.busy == [index]
    assert (await state_of(store))[f"h/{1 - index}"] is DRAINING


async def test_a_host_loads_report_does_not_put_a_draining_slot_back(store: Store) -> None:
    """GPU load reports move the scores of indexed slots only (ZADD XX on Redis)."""
    await registered(store, slots=2)
    await beat(store, delta(2, report(0, DRAINING)), 101.0)
    hb = msgspec.structs.replace(delta(3), gpus=[GpuReport(index=0, nvenc_load=0.5, gpu_load=0.5)])
    assert (await beat(store, hb, 102.0))[1] == HeartbeatReply()
    assert await claimable(store) == ["h/1"]
    if isinstance(store, RedisStore):
        assert await placement_index(store, "acme", "game") == {"h/1": 50.0}


async def test_a_draining_report_applies_after_a_registration(store: Store) -> None:
    """The agent re-registered while a renewal waited: its first full heartbeat carries it."""
    await registered(store, slots=1)
    await store.register_host(registration(1), 101.0, heartbeat_ttl_s=TTL)  # a repeat: numbering restarts
    _, reply = await beat(store, full(1, report(0, DRAINING)), 101.5)
    assert reply == HeartbeatReply()
    assert await state_of(store) == {"h/0": DRAINING}
    assert await claimable(store) == []
    # A host that died and registers anew has its slots starting: draining takes one out too.
    assert await store.expire_hosts(120.0, TTL) == []
    await store.register_host(msgspec.structs.replace(registration(2), boot_id="b2"), 121.0, heartbeat_ttl_s=TTL)
    hb = Heartbeat(boot_id="b2", seq=1, full=True, slots=[report(0, DRAINING), report(1)])
    assert (await beat(store, hb, 121.5))[1] == HeartbeatReply()
    assert await state_of(store) == {"h/0": DRAINING, "h/1": READY}
    assert await claimable(store) == ["h/1"]
