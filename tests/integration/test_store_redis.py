"""What only the Redis store has: its key layout on a real 3-node Redis Cluster, host
operations interrupted between their steps, replicas racing across cluster nodes,
script cache loss, expiry of finished tickets, and Redis errors as BackendUnavailable.
The shared semantics are in ``test_store_conformance.py`` and the state machine."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from matchmaker.models import EndReason, Session, SessionState, SlotState, TicketState
from matchmaker.redis_keys import TenantKeys
from matchmaker.store import BackendUnavailable, NoClaim, QueueFull, StoreError, open_store
from matchmaker.store_redis import FINISHED_TICKET_TTL_S, RedisStore
from tests.integration.test_store_conformance import (
    beat,
    claim,
    claimable,
    index_of,
    new_id,
    ready_host,
    registration,
    ticket,
    try_claim,
)
from tests.support.redis_peek import PipelineCount, indexed_slots

pytestmark = pytest.mark.integration

OpenStore = Callable[..., RedisStore]


@pytest.fixture(params=["redis", "redis-cluster"])
async def open_redis(request: pytest.FixtureRequest) -> AsyncIterator[OpenStore]:
    """Opens RedisStores (replicas) on one Redis or one Redis Cluster, sharing a prefix."""
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    prefix = f"r{uuid.uuid4().hex[:8]}"
    opened: list[RedisStore] = []

    def opener(**kw: object) -> RedisStore:
        store = RedisStore.from_url(url, prefix=prefix, **kw)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.aclose()


async def tenants_on_different_nodes(admin: RedisCluster, prefix: str) -> tuple[str, str]:
    """Two tenant names whose hash tags fall on two different cluster nodes."""
    await admin.initialize()

    def node(tenant: str) -> str:
        found = admin.get_node_from_key("{" + prefix + ":" + tenant + "}")
        assert found is not None
        return str(found.name)

    names = [f"tenant{i}" for i in range(50)]
    return names[0], next(n for n in names if node(n) != node(names[0]))


async def test_from_url_picks_the_client() -> None:
    store = open_store("redis://127.0.0.1:1/?cluster=1", prefix="x")
    assert isinstance(store, RedisStore) and isinstance(store._r, RedisCluster)
    await store.aclose()
    store = open_store("redis://127.0.0.1:1/0", prefix="x")
    assert isinstance(store, RedisStore) and isinstance(store._r, Redis)
    await store.aclose()
    with pytest.raises(ValueError):
        RedisStore.from_url("unix:///tmp/x.sock?cluster=1")
    with pytest.raises(ValueError):
        RedisStore.from_url("redis://127.0.0.1:1", prefix="bad{prefix}")


async def test_cluster_key_layout(redis_cluster_url: str) -> None:
    """A tenant's keys share one hash slot, the host keys another; tenants spread over nodes."""
    prefix = f"k{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(redis_cluster_url, prefix=prefix)
    admin = RedisCluster.from_url(redis_cluster_url.split("?")[0])
    try:
        a, b = await tenants_on_different_nodes(admin, prefix)
        await store.register_host(registration(host="h1", tenant=a), 100.0)
        await store.register_host(registration(host="h2", tenant=b), 100.0)
        await store.heartbeat("h1", beat(), 100.0)
        await store.heartbeat("h2", beat(), 100.0)
        s = await claim(store, tenant=a, client_key="alice")
        await store.enqueue(ticket(tenant=b), 10)
        keys = [k.decode() async for k in admin.scan_iter(match=f"*{prefix}*")]
        by_group: dict[str, set[int]] = {}
        for key in keys:
            if key.startswith("{"):
                group = key[: key.index("}") + 1]
                by_group.setdefault(group, set()).add(key_slot(key.encode()))
        assert set(by_group) == {"{" + prefix + "}", "{" + prefix + ":" + a + "}", "{" + prefix + ":" + b + "}"}
        assert all(len(slots) == 1 for slots in by_group.values()), by_group
        assert by_group["{" + prefix + ":" + a + "}"] != by_group["{" + prefix + ":" + b + "}"]
        assert {f"{prefix}:sid:{s.session_id}"} <= set(keys)  # the session lookup
    finally:
        await store.aclose()
        await admin.aclose()


async def test_a_host_serving_tenants_on_two_nodes(redis_cluster_url: str) -> None:
    """Heartbeat and expiry fan out to both tenants' slots; each end is returned once."""
    prefix = f"m{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(redis_cluster_url, prefix=prefix)
    admin = RedisCluster.from_url(redis_cluster_url.split("?")[0])
    try:
        a, b = await tenants_on_different_nodes(admin, prefix)
        reg = registration(slots=2)
        reg.slots[1].tenant = b
        reg.slots[0].tenant = a
        await store.register_host(reg, 100.0)
        _, reply = await store.heartbeat("h1", beat(), 100.0)
        assert reply.reset == []
        sa, sb = await claim(store, tenant=a), await claim(store, tenant=b)
        assert (sa.slot_id, sb.slot_id) == ("h1/0", "h1/1")
        ended, reply = await store.heartbeat("h1", beat(states={0: SlotState.READY, 1: SlotState.DEAD}), 101.0)
        assert [(e.session_id, e.end_reason) for e in ended] == [(sb.session_id, EndReason.SLOT_FAILED)]
        await store.end_session(sa.session_id, EndReason.PLAYER_LEFT, 102.0)
        _, reply = await store.heartbeat("h1", beat(), 103.0)
        assert [(r.index, r.session_id) for r in reply.reset] == [(0, sa.session_id)]
        await store.heartbeat("h1", beat(reset_for={0: sa.session_id}), 104.0)
        assert await claimable(store, tenant=a) == ["h1/0"]
        assert await claimable(store, tenant=b) == ["h1/1"]
        s2 = await claim(store, tenant=b)
        assert s2.slot_id == "h1/1"
        assert [e.session_id for e in await store.expire_hosts(200.0, ttl_s=10.0)] == [s2.session_id]
        assert await store.expire_hosts(201.0, ttl_s=10.0) == []
        assert await claimable(store, tenant=a) == [] and await claimable(store, tenant=b) == []
    finally:
        await store.aclose()
        await admin.aclose()


async def test_replicas_never_share_a_slot(open_redis: OpenStore) -> None:
    replicas = [open_redis() for _ in range(4)]
    await ready_host(replicas[0], slots=2)
    await ready_host(replicas[0], host="h2", boot="c1", slots=2)
    results = await asyncio.gather(*(try_claim(r) for r in replicas for _ in range(20)))
    won = [s for s in results if isinstance(s, Session)]
    assert results.count(NoClaim.NO_SLOT) == len(results) - 4
    winners = {s.slot_id: s.session_id for s in won}
    assert sorted(winners) == ["h1/0", "h1/1", "h2/0", "h2/1"]
    for replica in replicas:  # every replica sees the same, whoever claimed
        assert sorted((s.slot_id, s.session_id) for s in await replica.sessions()) == sorted(winners.items())
    # Every end is taken by exactly one replica.
    ends = await asyncio.gather(
        *(r.end_session(sid, EndReason.PLAYER_LEFT, 110.0) for r in replicas for sid in winners.values())
    )
    assert sum(e is not None for e in ends) == 4


async def test_host_copies_keep_their_flags_at_the_head_and_other_layouts_still_read(open_redis: OpenStore) -> None:
    """Allocation and heartbeats read a tenant's copy of a host by its flags alone, at the
    head of the JSON (``copy_flags`` in tenant.lua); a copy in another key order, as
    written before, is decoded whole and read the same."""
    store = open_redis()
    for old in (False, True):
        tenant = "old" if old else "new"
        key = TenantKeys(store.prefix, tenant).hosts
        for host, draining in ((f"{tenant}1", True), (f"{tenant}2", False)):  # host ids are fleet-wide
            await ready_host(store, host=host, boot=f"b-{host}", tenant=tenant, slots=1)
            stored = await store._r.hget(key, host)
            assert isinstance(stored, bytes), stored
            raw = stored.decode()
            copy = json.loads(raw)
            assert list(copy) == ["v", "i", "d", "x", "s"] and raw.endswith(f',"s":["{host}\\/0"]}}'), raw
            d, ids, i, v = json.dumps(draining), json.dumps(copy["s"]), copy["i"], copy["v"]
            if old:  # the order Lua's pairs() gave these keys
                raw = f'{{"i":{i},"x":false,"s":{ids},"d":{d},"v":{v}}}'
            else:
                raw = f'{{"v":{v},"i":{i},"d":{d},"x":false,"s":{ids}}}'
            await store._r.hset(key, host, raw)
        got = await try_claim(store, tenant=tenant)  # the first copy says draining: only the second's slot
        assert isinstance(got, Session) and got.slot_id == f"{tenant}2/0", (old, got)
        assert await try_claim(store, tenant=tenant) is NoClaim.NO_SLOT, old


INDEXES = ("created", "since:assigned", "since:connected", "since:disconnected")


async def deadline_index(store: RedisStore, tenant: str = "acme") -> dict[str, dict[str, float]]:
    tag = store._tag(tenant)
    out: dict[str, dict[str, float]] = {}
    for name in INDEXES:
        pairs = cast(list[tuple[bytes, float]], await store._r.zrange(f"{tag}:{name}", 0, -1, withscores=True))
        out[name] = {m.decode(): score for m, score in pairs}
    return out


async def test_the_deadline_indexes_follow_every_transition_exactly(open_redis: OpenStore) -> None:
    store = open_redis()
    t = 1_800_000_000.0 + 0.1234567
    await store.register_host(registration(slots=2), t)
    await store.heartbeat("h1", beat(), t)
    a, b = await claim(store, now=t), await claim(store, now=t + 0.1)
    a_, b_ = a.session_id, b.session_id
    assert await deadline_index(store) == {
        "created": {a_: t, b_: t + 0.1},
        "since:assigned": {a_: t, b_: t + 0.1},
        "since:connected": {},
        "since:disconnected": {},
    }
    await store.mark_connected(a_, t + 1.1)
    await store.mark_disconnected(a_, t + 2.2)
    await store.touch(b_, t + 3.3)
    assert await deadline_index(store) == {
        "created": {a_: t, b_: t + 0.1},
        "since:assigned": {b_: t + 3.3},
        "since:connected": {},
        "since:disconnected": {a_: t + 2.2},
    }
    await store.reattach(a_, t + 4.4)
    await store.mark_connected(b_, t + 5.5)
    await store.touch(b_, t + 6.6)
    assert await deadline_index(store) == {
        "created": {a_: t, b_: t + 0.1},
        "since:assigned": {a_: t + 4.4},
        "since:connected": {b_: t + 6.6},
        "since:disconnected": {},
    }
    await store.end_session(b_, EndReason.PLAYER_LEFT, t + 7.0)
    await store.heartbeat("h1", beat(states={index_of(a): SlotState.DEAD}), t + 8.0)  # a's slot fails
    assert await deadline_index(store) == {name: {} for name in INDEXES}


async def test_sessions_written_before_the_indexes_are_indexed_by_the_next_due_read(open_redis: OpenStore) -> None:
    """An upgrade finds live sessions without index entries: they must still time out."""
    store = open_redis()
    await ready_host(store)
    a, b = await claim(store, now=100.0), await claim(store, now=130.0)
    await store.mark_connected(b.session_id, 131.0)
    before = await deadline_index(store)
    for name in INDEXES:
        await store._r.delete(f"{store._tag('acme')}:{name}")
    rules = {"connect_timeout_s": 60.0, "reconnect_grace_s": 30.0, "idle_timeout_s": 0.0, "max_session_s": 0.0}
    assert [s.session_id for s in await store.due_sessions(161.0, limit=10, **rules)] == [a.session_id]
    assert await deadline_index(store) == before


async def test_an_interrupted_drain_is_finished_by_the_next_sweep(open_redis: OpenStore) -> None:
    store, other = open_redis(), open_redis()
    await ready_host(store)
    # Step 1 of set_draining ran, then the replica died before the tenants heard of it.
    await store._scripts.set_draining([store._g.host("h1"), store._g.dirty], ["h1", "1"])
    assert len(await indexed_slots(store, "acme", "game")) == 2  # lagging, claimable: ordered before the drain
    assert await other.expire_hosts(101.0, ttl_s=60.0) == []
    assert await indexed_slots(store, "acme", "game") == []
    assert await try_claim(store) is NoClaim.NO_SLOT
    assert await store._r.smembers(store._g.dirty) == set()


async def test_an_interrupted_expiry_ends_its_sessions_once(open_redis: OpenStore) -> None:
    store, other = open_redis(), open_redis()
    await ready_host(store)
    s = await claim(store)
    g = store._g
    # The host was marked dead, then the replica died before ending its sessions.
    await store._scripts.expire_hosts([g.hb, g.dirty, g.outbox, g.dead, g.host("h1")], ["200.0", "10.0", "h1"])
    ended = await other.expire_hosts(201.0, ttl_s=10.0)
    assert [(e.session_id, e.end_reason) for e in ended] == [(s.session_id, EndReason.HOST_DEAD)]
    assert await store.expire_hosts(202.0, ttl_s=10.0) == []
    assert await store.session(s.session_id) is None


async def test_a_crash_leftover_ended_by_reregistration_is_still_returned(open_redis: OpenStore) -> None:
    store = open_redis()
    await ready_host(store)
    s = await claim(store)
    g = store._g
    await store._scripts.expire_hosts([g.hb, g.dirty, g.outbox, g.dead, g.host("h1")], ["200.0", "10.0", "h1"])
    await store.register_host(registration(boot="b2"), 201.0)  # drops the old incarnation's slots
    assert await store.session(s.session_id) is None
    ended = await store.expire_hosts(202.0, ttl_s=10.0)
    assert [(e.session_id, e.end_reason) for e in ended] == [(s.session_id, EndReason.HOST_DEAD)]
    assert await store.expire_hosts(203.0, ttl_s=10.0) == []
    assert sorted((x.slot_id, x.state) for x in await store.slots()) == [
        ("h1/0", SlotState.STARTING),
        ("h1/1", SlotState.STARTING),
    ]


async def test_scripts_are_reloaded_when_the_server_forgets_them(open_redis: OpenStore) -> None:
    store = open_redis()
    await ready_host(store)
    if isinstance(store._r, RedisCluster):
        await store._r.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.ALL_NODES)
    else:
        await store._r.script_flush()
    assert await store._r.script_exists(store._scripts.allocate.sha) == [False]
    s = await claim(store)  # pipelined EVALSHA -> NOSCRIPT -> load and rerun
    assert (await store.mark_connected(s.session_id, 101.0)).state is SessionState.CONNECTED  # type: ignore[union-attr]
    _, reply = await store.heartbeat("h1", beat(), 102.0)
    assert reply.reset == []


async def test_lookups_and_finished_tickets_expire(open_redis: OpenStore) -> None:
    store = open_redis()
    await ready_host(store)
    await claim(store)
    s = await claim(store)
    lost = new_id()
    assert await try_claim(store, sid=lost) is NoClaim.NO_SLOT
    assert await store._r.exists(store._g.session_tenant(lost)) == 0  # a lost claim leaves no lookup
    assert await store._r.exists(store._g.session_tenant(s.session_id)) == 1
    await store.end_session(s.session_id, EndReason.PLAYER_LEFT, 110.0)
    assert await store._r.exists(store._g.session_tenant(s.session_id)) == 0
    t = ticket()
    await store.enqueue(t, 10)
    assert await store._r.ttl(store._g.ticket_tenant(t.ticket_id)) == -1  # waiting: kept
    assert await store.finish_ticket(t.ticket_id, TicketState.CANCELLED, "bye")
    tag = store._tag("acme")
    for key in (f"{tag}:ticket:{t.ticket_id}", store._g.ticket_tenant(t.ticket_id)):
        assert 0 < await store._r.ttl(key) <= FINISHED_TICKET_TTL_S
    full = ticket()
    await store.enqueue(ticket(), 1)
    with pytest.raises(QueueFull):
        await store.enqueue(full, 1)
    assert await store._r.exists(store._g.ticket_tenant(full.ticket_id)) == 0


async def test_unreachable_redis_is_backend_unavailable(tmp_path: object) -> None:
    store = RedisStore.from_url(f"unix://{tmp_path}/nothing.sock", prefix="x", timeout_s=1.0)
    with pytest.raises(BackendUnavailable):
        await store.serves("acme", "game")
    await store.aclose()


async def test_a_silent_redis_times_out_as_backend_unavailable() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, read, never reply
        writer.close()  # once the client is gone (an unclosed socket is a ResourceWarning later)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}", prefix="x", timeout_s=0.3)
    try:
        with pytest.raises(BackendUnavailable):
            await try_claim(store)
    finally:
        await store.aclose()
        server.close()


async def test_a_drain_racing_a_death_leaves_the_death_to_the_sweep(open_redis: OpenStore) -> None:
    store = open_redis()
    await ready_host(store)
    s = await claim(store)
    g = store._g
    # set_draining's first step ran, then the host was declared dead before it propagated.
    await store._scripts.set_draining([g.host("h1"), g.dirty], ["h1", "1"])
    await store._scripts.expire_hosts([g.hb, g.dirty, g.outbox, g.dead, g.host("h1")], ["200.0", "10.0", "h1"])
    assert await store._propagate(["h1"], None) == []  # what set_draining then does
    assert await store.session(s.session_id) is not None
    ended = await store.expire_hosts(201.0, ttl_s=10.0)
    assert [(e.session_id, e.end_reason, e.ended_at) for e in ended] == [(s.session_id, EndReason.HOST_DEAD, 201.0)]


async def test_unreachable_cluster_is_backend_unavailable() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/?cluster=1", prefix="x", timeout_s=2.0)
    with pytest.raises(BackendUnavailable):
        await store.serves("acme", "game")
    await store.aclose()


async def test_a_cancelled_caller_always_sees_cancelled_error(open_redis: OpenStore) -> None:
    """redis-py loses cancellations that land mid-command (they come back as connection
    errors, or the command is retried and returns); the store must not: a loop that
    swallows StoreError, like the matchmaker's sweep, still stops when cancelled."""
    store = open_redis()
    await ready_host(store)

    async def sweep_like() -> None:
        while True:
            try:
                await store.expire_hosts(101.0, ttl_s=1000.0)
                await store.sessions()
                await store.slots()
            except StoreError:
                pass
            await asyncio.sleep(0)

    rng = random.Random(7)
    for _ in range(60):
        task = asyncio.create_task(sweep_like())
        await asyncio.sleep(rng.random() * 0.005)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
        assert done and task.cancelled(), "a cancelled task ran on"


async def test_an_interrupted_forget_is_finished_by_the_next(open_redis: OpenStore) -> None:
    """A replica that dies between marking a dead host forgotten and deleting it leaves
    the host to the next forget_hosts (any replica's); the tenant copy goes either way."""
    store, other = open_redis(), open_redis()
    await ready_host(store)
    assert await store.expire_hosts(200.0, ttl_s=10.0) == []
    g = store._g
    assert await store._scripts.forget_hosts([g.dead, g.dirty, g.host("h1")], ["5000.0", "3600.0", "h1"]) == [b"h1"]
    assert [h.host_id for h in await store.hosts()] == ["h1"]  # not deleted yet
    assert await other.expire_hosts(5001.0, ttl_s=10.0) == []  # applies the dirty host: slots go
    assert await store.slots() == []
    assert await other.forget_hosts(5002.0, 3600.0) == ["h1"]
    assert await store.hosts() == [] and await store._r.smembers(g.dirty) == set()
    assert await store._r.zcard(g.dead) == 0


async def test_concurrent_batches_share_a_round_trip_and_keep_their_own_results(redis_url: str) -> None:
    """Batches asked for in one event-loop turn go out as one pipeline; each caller gets
    only its own replies, or its own error, and a caller that gives up spoils nothing."""
    from matchmaker.redis_base import cmd as _cmd

    store = RedisStore.from_url(redis_url, prefix=f"b{uuid.uuid4().hex[:8]}")
    pipelines = PipelineCount(store)
    key = f"{store.prefix}:k"
    try:
        replies: list[Any] = await asyncio.gather(
            store._batch([_cmd("SET", key, "1"), _cmd("GET", key)]),
            store._batch([_cmd("INCR", key)]),
            store._batch([_cmd("NOSUCHCOMMAND", key)]),
            store._batch([_cmd("GET", key)]),
            return_exceptions=True,
        )
        first, second, bad, third = replies
        assert pipelines.n == 1
        assert first == [True, b"1"] and second == [2] and third == [b"2"]
        assert isinstance(bad, Exception) and "NOSUCHCOMMAND" in str(bad).upper()
        # A caller that gives up (its timeout) after queueing its call: the round trip
        # still carries it (it was on its way), and the others get their own replies.
        slow = asyncio.ensure_future(store._batch([_cmd("INCR", key)]))
        fine = asyncio.ensure_future(store._batch([_cmd("INCR", key)]))
        await asyncio.sleep(0)  # both have queued their calls; the round trip has not left
        assert len(store._queued) == 2
        slow.cancel()
        assert await fine == [4]
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await store._batch([_cmd("GET", key)]) == [b"4"] and pipelines.n == 3
    finally:
        await store._r.delete(key)
        await store.aclose()


async def test_session_reports_with_a_noted_tenant_need_no_lookup_and_share_a_round_trip(redis_url: str) -> None:
    """A report's tenant from its verified token replaces the session lookup; concurrent
    reports (one batched request's) go out as one pipeline; a wrong tenant noted can only
    make the session look unknown, never touch another tenant's."""
    store = RedisStore.from_url(redis_url, prefix=f"n{uuid.uuid4().hex[:8]}")
    try:
        await ready_host(store)
        sessions = [await claim(store) for _ in range(2)]
        for s in sessions:  # a fresh replica: nothing cached, and no lookup to read
            store._session_tenant.pop(s.session_id, None)
            await store._r.delete(store._g.session_tenant(s.session_id))
        assert await store.mark_connected(sessions[0].session_id, 101.0) is None  # unknown without the tenant

        pipelines = PipelineCount(store)
        for s in sessions:
            store.note_tenant(s.session_id, s.tenant)
        done = await asyncio.gather(*(store.mark_connected(s.session_id, 102.0) for s in sessions))
        assert pipelines.n == 1
        assert [d.state if d else None for d in done] == [SessionState.CONNECTED] * 2

        other = sessions[0]
        store.note_tenant(other.session_id, "someone-else")
        assert await store.mark_disconnected(other.session_id, 103.0) is None
        store.note_tenant(other.session_id, other.tenant)
        kept = await store.session(other.session_id)
        assert kept is not None and kept.state is SessionState.CONNECTED
    finally:
        await store.aclose()
