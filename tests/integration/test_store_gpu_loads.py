"""Per-GPU loads on every store (memory, Redis, Redis Cluster): slots registered with a
``gpu`` take that GPU's load from the heartbeats' ``gpus`` reports, so one GPU's change is
one report however many slots share it; placement orders by it, listings show it, it
applies only in sequence, and a new incarnation starts without the old one's loads."""

from __future__ import annotations

import msgspec
import pytest

from matchmaker.models import (
    AllocationRequest,
    GpuReport,
    Heartbeat,
    HeartbeatReply,
    HostRegistration,
    Session,
    SlotReport,
    SlotSpec,
    SlotState,
)
from matchmaker.store import Store
from matchmaker.store_redis import RedisStore
from tests.support.redis_peek import placement_index

pytestmark = pytest.mark.integration

TTL = 10.0
READY = SlotState.READY
SLOTS_PER_GPU = 3


def registration(boot_id: str = "b1", region: str = "eu") -> HostRegistration:
    """Six slots of one tenant on GPUs 0 and 1, plus slot 6 without a GPU (an older agent's)."""
    specs = [
        SlotSpec(index=i, tenant="acme", app="game", streamer_id=f"h-{i}", gpu=i // SLOTS_PER_GPU) for i in range(6)
    ]
    specs.append(SlotSpec(index=6, tenant="acme", app="game", streamer_id="h-6"))
    return HostRegistration(host_id="h", boot_id=boot_id, region=region, signaling_url="ws://127.0.0.1:80", slots=specs)


def ready(index: int, load: float = 0.9) -> SlotReport:
    """A slot report whose own loads a GPU slot must ignore (0.9 would put it last)."""
    return SlotReport(index=index, state=READY, nvenc_load=load, gpu_load=load)


def gpus(*loads: tuple[int, float, float]) -> list[GpuReport]:
    return [GpuReport(index=i, nvenc_load=n, gpu_load=g) for i, n, g in loads]


async def beat(store: Store, hb: Heartbeat, now: float) -> HeartbeatReply:
    _, reply = await store.heartbeat("h", hb, now, heartbeat_ttl_s=TTL)
    return reply


async def loads(store: Store) -> dict[str, tuple[float, float]]:
    return {s.slot_id: (s.nvenc_load, s.gpu_load) for s in await store.slots()}


async def claim(store: Store, n: int, now: float) -> Session:
    got = await store.allocate(
        AllocationRequest(tenant="acme", app="game"), f"s{n}", now, policy="spread", heartbeat_ttl_s=TTL
    )
    assert isinstance(got, Session), got
    return got


async def scores(store: Store) -> dict[str, float] | None:
    """The Redis placement index (all regions and the host's region agree), or None."""
    if not isinstance(store, RedisStore):
        return None
    every = await placement_index(store, "acme", "game")
    assert await placement_index(store, "acme", "game", region="eu") == every
    return every


async def registered(store: Store) -> None:
    await store.register_host(registration(), 100.0, heartbeat_ttl_s=TTL)
    hb = Heartbeat(
        boot_id="b1", seq=1, full=True, slots=[ready(i) for i in range(7)], gpus=gpus((0, 0.5, 0.4), (1, 0.1, 0.2))
    )
    assert (await beat(store, hb, 100.0)).snapshot is msgspec.UNSET


async def test_a_gpu_report_is_the_load_of_every_slot_on_that_gpu(store: Store) -> None:
    await registered(store)
    assert await loads(store) == {
        **{f"h/{i}": (0.5, 0.4) for i in range(3)},
        **{f"h/{i}": (0.1, 0.2) for i in range(3, 6)},
        "h/6": (0.9, 0.9),  # no GPU: its own report
    }
    if (index := await scores(store)) is not None:
        assert index == {**{f"h/{i}": 50.0 for i in range(3)}, **{f"h/{i}": 20.0 for i in range(3, 6)}, "h/6": 90.0}
    # spread: the least loaded GPU's three slots first, then GPU 0's, then the slot at 90 %
    order = [(await claim(store, n, 101.0)).slot_id for n in range(7)]
    assert sorted(order[:3]) == ["h/3", "h/4", "h/5"]
    assert sorted(order[3:6]) == ["h/0", "h/1", "h/2"]
    assert order[6] == "h/6"


async def test_a_delta_with_one_gpu_moves_all_its_slots(store: Store) -> None:
    await registered(store)
    reply = await beat(store, Heartbeat(boot_id="b1", seq=2, full=False, slots=[], gpus=gpus((0, 0.05, 0.0))), 101.0)
    assert reply == HeartbeatReply()
    got = await loads(store)
    assert [got[f"h/{i}"] for i in range(6)] == [(0.05, 0.0)] * 3 + [(0.1, 0.2)] * 3
    if (index := await scores(store)) is not None:
        assert [index[f"h/{i}"] for i in range(6)] == [5.0] * 3 + [20.0] * 3
    assert (await claim(store, 0, 102.0)).slot_id in ("h/0", "h/1", "h/2")


async def test_a_slot_that_comes_back_ready_takes_its_gpus_current_load(store: Store) -> None:
    await registered(store)
    dead = SlotReport(index=4, state=SlotState.DEAD)
    await beat(store, Heartbeat(boot_id="b1", seq=2, full=False, slots=[dead]), 101.0)
    await beat(store, Heartbeat(boot_id="b1", seq=3, full=False, slots=[], gpus=gpus((1, 0.7, 0.3))), 102.0)
    if (index := await scores(store)) is not None:
        assert "h/4" not in index and index["h/3"] == 70.0
    await beat(store, Heartbeat(boot_id="b1", seq=4, full=False, slots=[ready(4, load=0.0)]), 103.0)
    assert (await loads(store))["h/4"] == (0.7, 0.3)
    if (index := await scores(store)) is not None:
        assert index["h/4"] == 70.0


async def test_a_gpu_report_out_of_sequence_does_not_apply(store: Store) -> None:
    await registered(store)
    reply = await beat(store, Heartbeat(boot_id="b1", seq=5, full=False, slots=[], gpus=gpus((1, 0.99, 0.99))), 101.0)
    assert reply.snapshot is True
    assert (await loads(store))["h/3"] == (0.1, 0.2)
    if (index := await scores(store)) is not None:
        assert index["h/3"] == 20.0


async def test_a_new_incarnation_starts_without_the_old_gpu_loads(store: Store) -> None:
    await registered(store)
    await store.expire_hosts(100.0 + TTL + 1, TTL)
    await store.register_host(registration(boot_id="b2"), 120.0, heartbeat_ttl_s=TTL)
    hb = Heartbeat(boot_id="b2", seq=1, full=True, slots=[ready(i) for i in range(6)])
    await beat(store, hb, 120.0)
    got = await loads(store)
    assert [got[f"h/{i}"] for i in range(6)] == [(0.0, 0.0)] * 6  # no GPU report yet: no load known
    if (index := await scores(store)) is not None:
        assert {index[f"h/{i}"] for i in range(6)} == {0.0}
