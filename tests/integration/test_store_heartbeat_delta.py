"""Delta heartbeats on every store (memory, Redis, Redis Cluster): a numbered delta changes
only the slots it lists, and only in sequence; one out of sequence changes no slot, keeps
the host alive and asks for a snapshot; a full heartbeat always gets the host back in
step; an agent that does not number its heartbeats is heard as before."""

from __future__ import annotations

import msgspec
import pytest

from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    HeartbeatReply,
    HostRegistration,
    Session,
    SlotReport,
    SlotSpec,
    SlotState,
)
from matchmaker.store import NoClaim, Store, in_sequence
from matchmaker.store_redis import RedisStore
from tests.support.redis_peek import indexed_slots

pytestmark = pytest.mark.integration

TTL = 10.0
READY, DEAD, STARTING = SlotState.READY, SlotState.DEAD, SlotState.STARTING


def registration(slots: int = 4, tenants: tuple[str, ...] = ("acme",)) -> HostRegistration:
    return HostRegistration(
        host_id="h",
        boot_id="b1",
        region="eu",
        signaling_url="ws://127.0.0.1:80",
        slots=[
            SlotSpec(index=i, tenant=tenants[i % len(tenants)], app="game", streamer_id=f"h-{i}") for i in range(slots)
        ],
    )


def report(index: int, state: SlotState = READY, load: float = 0.1, reset_for: str | None = None) -> SlotReport:
    return SlotReport(index=index, state=state, nvenc_load=load, gpu_load=load, reset_for=reset_for)


def full(seq: int, *reports: SlotReport, slots: int = 4) -> Heartbeat:
    return Heartbeat(boot_id="b1", seq=seq, full=True, slots=list(reports) or [report(i) for i in range(slots)])


def delta(seq: int, *reports: SlotReport) -> Heartbeat:
    return Heartbeat(boot_id="b1", seq=seq, full=False, slots=list(reports))


async def beat(store: Store, hb: Heartbeat, now: float) -> HeartbeatReply:
    _, reply = await store.heartbeat("h", hb, now, heartbeat_ttl_s=TTL)
    return reply


async def states(store: Store) -> dict[str, tuple[SlotState, float]]:
    return {s.slot_id: (s.state, s.nvenc_load) for s in await store.slots()}


async def claimable(store: Store, tenant: str = "acme") -> list[str]:
    ids = sorted(s.slot_id for s in await store.slots() if s.tenant == tenant and s.state is READY)
    if isinstance(store, RedisStore):
        assert await indexed_slots(store, tenant, "game") == ids
    return ids


async def claim(store: Store, now: float, tenant: str = "acme") -> Session | NoClaim:
    got = await store.allocate(
        AllocationRequest(tenant=tenant, app="game"), f"s-{now}-{tenant}", now, policy="spread", heartbeat_ttl_s=TTL
    )
    assert isinstance(got, Session | NoClaim), got
    return got


async def registered(store: Store, slots: int = 4, tenants: tuple[str, ...] = ("acme",)) -> None:
    await store.register_host(registration(slots, tenants), 100.0, heartbeat_ttl_s=TTL)
    reply = await beat(store, full(1, slots=slots), 100.0)
    assert reply.snapshot is msgspec.UNSET


async def test_a_delta_changes_only_the_slots_it_lists(store: Store) -> None:
    await registered(store)
    reply = await beat(store, delta(2, report(1, DEAD), report(2, load=0.5)), 101.0)
    assert reply.snapshot is msgspec.UNSET
    assert await states(store) == {
        "h/0": (READY, 0.1),
        "h/1": (DEAD, 0.1),
        "h/2": (READY, 0.5),
        "h/3": (READY, 0.1),
    }
    assert await claimable(store) == ["h/0", "h/2", "h/3"]
    assert await beat(store, delta(3), 102.0) == HeartbeatReply()  # nothing changed: nothing sent
    assert await beat(store, delta(4, report(1)), 103.0) == HeartbeatReply()
    assert await claimable(store) == ["h/0", "h/1", "h/2", "h/3"]


async def test_a_delta_out_of_sequence_is_refused_and_the_host_stays_alive(store: Store) -> None:
    await registered(store)
    reply = await beat(store, delta(3, report(0, DEAD)), 108.0)  # seq 2 was lost
    assert reply.snapshot is True
    assert await states(store) == {f"h/{i}": (READY, 0.1) for i in range(4)}  # nothing of it applied
    host = (await store.hosts())[0]
    assert host.last_heartbeat == 108.0 and not host.dead
    # Alive past the first beat's deadline: the refused delta moved it.
    got = await claim(store, 115.0)
    assert isinstance(got, Session)
    assert (await beat(store, delta(4, report(0, DEAD)), 115.0)).snapshot is True  # still no record of 3
    # The full heartbeat the reply asked for applies, and deltas follow it again.
    ended, reply = await store.heartbeat("h", full(5, report(0, DEAD), *map(report, (1, 2, 3))), 116.0)
    assert reply.snapshot is msgspec.UNSET
    assert [s.slot_id for s in ended] == (["h/0"] if got.slot_id == "h/0" else [])
    assert await claimable(store) == sorted({"h/1", "h/2", "h/3"} - {got.slot_id})
    assert (await states(store))["h/0"] == (DEAD, 0.1)
    assert await beat(store, delta(6, report(0)), 117.0) == HeartbeatReply()
    assert (await states(store))["h/0"] == (READY, 0.1)


async def test_a_delta_without_a_previous_report_or_an_older_full_beat_is_refused(store: Store) -> None:
    await store.register_host(registration(), 100.0, heartbeat_ttl_s=TTL)
    assert (await beat(store, delta(1, report(0)), 100.0)).snapshot is True  # nothing to apply it to
    assert await claimable(store) == []
    assert await beat(store, full(2), 101.0) == HeartbeatReply()
    assert await beat(store, full(4, report(0, DEAD)), 102.0) == HeartbeatReply()
    # An older full heartbeat arriving late (reordered) does not undo the newer one.
    assert (await beat(store, full(3, report(0)), 102.5)).snapshot is True
    assert (await states(store))["h/0"] == (DEAD, 0.1)
    # A repeated registration restarts the numbering: no delta before its first full beat.
    await store.register_host(registration(), 103.0, heartbeat_ttl_s=TTL)
    assert (await beat(store, delta(5, report(0)), 103.5)).snapshot is True
    assert await beat(store, full(1, report(0)), 104.0) == HeartbeatReply()
    assert await beat(store, delta(2, report(1, DEAD)), 104.5) == HeartbeatReply()
    assert await claimable(store) == ["h/0", "h/2", "h/3"]


async def test_heartbeats_without_seq_are_heard_as_before(store: Store) -> None:
    await store.register_host(registration(), 100.0, heartbeat_ttl_s=TTL)
    old = Heartbeat(boot_id="b1", slots=[report(0), report(1)])
    reply = await beat(store, old, 100.0)
    assert reply == HeartbeatReply() and b"snapshot" not in msgspec.json.encode(reply)
    assert await claimable(store) == ["h/0", "h/1"]
    # Unlisted slots keep what they had, as always; a repeat applies again.
    assert await beat(store, Heartbeat(boot_id="b1", slots=[report(1, DEAD)]), 101.0) == HeartbeatReply()
    assert await beat(store, Heartbeat(boot_id="b1", slots=[report(1, DEAD)]), 102.0) == HeartbeatReply()
    assert await claimable(store) == ["h/0"]
    # A numbered agent may follow (an upgrade): its first full beat starts the sequence.
    assert (await beat(store, delta(1, report(1)), 103.0)).snapshot is True
    assert await beat(store, full(1, report(1)), 104.0) == HeartbeatReply()
    assert await claimable(store) == ["h/0", "h/1"]


async def test_resets_through_deltas(store: Store) -> None:
    await registered(store)
    s = await claim(store, 101.0)
    assert isinstance(s, Session)
    index = int(s.slot_id.rsplit("/", 1)[1])
    await store.end_session(s.session_id, EndReason.PLAYER_LEFT, 102.0)
    # Every reply lists the reset until the agent reports it, whatever the delta lists.
    for seq, now in ((2, 103.0), (3, 104.0)):
        reply = await beat(store, delta(seq), now)
        assert [(r.index, r.session_id) for r in reply.reset] == [(index, s.session_id)]
    reply = await beat(store, delta(4, report(index, SlotState.RESETTING)), 105.0)
    assert [r.session_id for r in reply.reset] == [s.session_id]
    assert await beat(store, delta(5, report(index, reset_for=s.session_id)), 106.0) == HeartbeatReply()
    assert (await states(store))[s.slot_id] == (READY, 0.1)
    assert len(await claimable(store)) == 4


async def test_a_delta_without_a_tenants_slots_still_keeps_that_tenant_placing(store: Store) -> None:
    """Each tenant's copy of the host learns every heartbeat's deadline, also from a delta
    that lists none of its slots (allocation checks that deadline)."""
    await registered(store, tenants=("acme", "other"))
    for seq, now in ((2, 108.0), (3, 116.0)):
        assert await beat(store, delta(seq, report(0, DEAD)) if seq == 2 else delta(seq), now) == HeartbeatReply()
    got = await claim(store, 120.0, tenant="other")
    assert isinstance(got, Session) and got.slot_id in ("h/1", "h/3")
    assert await claimable(store, "acme") == ["h/2"]


async def test_a_delta_after_a_replica_found_the_host_overdue_puts_every_slot_back(store: Store) -> None:
    await registered(store, slots=3)
    assert await claim(store, 110.5) is NoClaim.NO_SLOT  # a replica with its clock ahead: overdue
    assert (await beat(store, delta(2), 109.9)) == HeartbeatReply()
    got = [await claim(store, 110.0 + i / 10) for i in range(3)]
    assert sorted(s.slot_id for s in got if isinstance(s, Session)) == ["h/0", "h/1", "h/2"]


async def test_a_refused_delta_also_puts_every_slot_back(store: Store) -> None:
    await registered(store, slots=2)
    assert await claim(store, 110.5) is NoClaim.NO_SLOT
    assert (await beat(store, delta(5), 109.9)).snapshot is True
    assert isinstance(await claim(store, 110.0), Session)


def test_the_sequence_rule() -> None:
    assert in_sequence(Heartbeat(boot_id="b", slots=[]), None) and in_sequence(Heartbeat(boot_id="b", slots=[]), 7)
    assert in_sequence(full(1), None) and in_sequence(full(8), 7) and not in_sequence(full(7), 7)
    assert in_sequence(delta(8), 7) and not in_sequence(delta(9), 7) and not in_sequence(delta(1), None)
    with pytest.raises(ValueError, match="needs its seq"):
        Heartbeat(boot_id="b", slots=[], full=False)
    with pytest.raises(msgspec.ValidationError, match="needs its seq"):
        msgspec.json.decode(b'{"boot_id": "b", "slots": [], "full": false}', type=Heartbeat)


async def test_a_forgotten_host_that_registers_anew_is_heard_with_its_new_slots(store: Store) -> None:
    """Its record starts again from scratch (on Redis, its incarnation counter too): a
    store that remembered the old incarnation's slot map must not use it."""
    await registered(store, slots=2)
    assert await store.expire_hosts(120.0, TTL) == []
    assert await store.forget_hosts(200.0, 60.0) == ["h"]
    await store.register_host(registration(3, ("other",)), 300.0, heartbeat_ttl_s=TTL)
    assert await beat(store, full(1, slots=3), 300.0) == HeartbeatReply()
    assert await claimable(store, "other") == ["h/0", "h/1", "h/2"]
    assert await beat(store, delta(2, report(2, DEAD)), 301.0) == HeartbeatReply()
    assert await claimable(store, "other") == ["h/0", "h/1"]
    assert await claimable(store, "acme") == []
