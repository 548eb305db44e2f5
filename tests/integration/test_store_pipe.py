"""The Redis store's round trips on its own pipe (one dedicated connection, batches not
waiting for each other's replies: pixelfleet/redis_pipe.py), against a real redis-server
that is killed, frozen, and failed over by a Sentinel. Whatever happens to Redis, an
operation ends with its result or BackendUnavailable, never hangs, and the next one after
Redis is back goes through on a new connection."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from matchmaker.config import MatchmakerSettings
from matchmaker.models import AllocationRequest, Session, SlotState
from matchmaker.server import build_matchmaker
from matchmaker.store import BackendUnavailable, NoClaim, NotReplicated
from matchmaker.store_redis import RedisStore
from tests.integration.test_store_conformance import beat, claim, registration, try_claim
from tests.support.redis_sentinel import SentinelSet
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

CONFIRM_MS = 3000  # where a replica is to confirm: ample on a loaded machine (the store's limit is 5 s)


async def ready_host(store: RedisStore, slots: int) -> None:
    await store.register_host(registration(slots=slots), 100.0)
    await store.heartbeat("h1", beat(states=dict.fromkeys(range(slots), SlotState.READY)), 100.0)


def store_on(url: str, *, prefix: str | None = None, timeout_s: float = 5.0, **kw: int) -> RedisStore:
    """A store on keys of its own, or on ``prefix``'s (another store's, seen another way)."""
    return RedisStore.from_url(url, prefix=prefix or f"p{uuid.uuid4().hex[:8]}", timeout_s=timeout_s, **kw)


async def test_many_allocations_share_the_pipe_and_each_gets_its_own_slot(redis_tcp: RedisServer) -> None:
    store = store_on(redis_tcp.url)
    try:
        await ready_host(store, slots=64)
        got = await asyncio.gather(*(try_claim(store) for _ in range(80)))
        sessions = [g for g in got if isinstance(g, Session)]
        assert len(sessions) == 64 and len({s.slot_id for s in sessions}) == 64
        assert store._pipe is not None and not store._pipe.broken and store._pipe.waiting == 0
        # on the installed redis-py the pipe reads in its socket's read (pixelfleet/redis_takeover.py)
        assert store._pipe.reads_in_socket
    finally:
        await store.aclose()


async def test_a_killed_redis_fails_the_operation_clearly_and_the_next_after_restart_succeeds(
    redis_tcp: RedisServer,
) -> None:
    store = store_on(redis_tcp.url)
    try:
        await ready_host(store, slots=4)
        await claim(store)
        first_pipe = store._pipe
        await redis_tcp.kill()
        with pytest.raises(BackendUnavailable):
            await try_claim(store)
        assert first_pipe is not None and first_pipe.broken
        await redis_tcp.start()  # back empty: the host registers again, as an agent would
        await ready_host(store, slots=4)
        await claim(store)
        assert store._pipe is not first_pipe and store._pipe is not None and not store._pipe.broken
    finally:
        await store.aclose()


async def test_a_frozen_redis_fails_the_operations_waiting_within_the_timeout(redis_tcp: RedisServer) -> None:
    """A frozen Redis closes nothing and answers nothing: the store's timeout ends every
    operation that waits (BackendUnavailable), and the pipe is given up for a new one."""
    store = store_on(redis_tcp.url, timeout_s=1.0)
    try:
        await ready_host(store, slots=4)
        await claim(store)
        first_pipe = store._pipe
        redis_tcp.freeze()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(try_claim(store) for _ in range(3)), return_exceptions=True), 30.0
        )
        assert all(isinstance(o, BackendUnavailable) for o in outcomes), outcomes
        await redis_tcp.stop()
        await redis_tcp.start()
        await ready_host(store, slots=4)
        await claim(store)
        assert store._pipe is not first_pipe
    finally:
        await store.aclose()


async def test_after_a_sentinel_failover_the_pipe_follows_the_new_primary(sentinel_set: SentinelSet) -> None:
    store = store_on(sentinel_set.url, timeout_s=2.0)
    try:
        await ready_host(store, slots=8)
        before = await claim(store)
        await sentinel_set.replicated()  # the host and the first claim are on the replica too
        await sentinel_set.fail_over()
        after = await after_failover(store)
        assert isinstance(after, Session) and after.slot_id != before.slot_id  # the replica had the first claim
        probe = sentinel_set.replica.client()  # now the primary
        try:
            assert await probe.hexists(store._tag("acme") + ":sessions", after.session_id)
        finally:
            await probe.aclose()
    finally:
        await store.aclose()


async def _a_claim_as_the_primary_dies_unreplicated(
    sentinel_set: SentinelSet, store: RedisStore, plain: RedisStore
) -> Session | None:
    """One slot (made ready through ``plain``, a store that does not wait), and its claim
    made while the replicas are frozen and cut off, so none gets it; then the primary dies
    and a replica, thawed, is promoted. The claim if ``store`` made it."""
    await ready_host(plain, slots=1)
    await sentinel_set.replicated()
    for replica in sentinel_set.replicas:
        replica.freeze()
    await sentinel_set.cut_replication()
    try:
        first: Session | None = await claim(store)
    except BackendUnavailable:
        first = None
    await sentinel_set.primary.kill()
    for replica in sentinel_set.replicas:
        replica.thaw()
    await sentinel_set.fail_over()
    return first


async def after_failover(store: RedisStore) -> object:
    """The first claim's outcome once the store reaches the new primary: a slot, a NoClaim,
    or a NotReplicated refusal; a pipe's failure meanwhile (BackendUnavailable) is retried."""
    seen: list[str] = []
    for _ in range(150):  # bounded: 30 s (a cluster's node timeout, then its election)
        try:
            return await try_claim(store)
        except NotReplicated as exc:
            return exc
        except BackendUnavailable as exc:
            seen.append(str(exc))
            await asyncio.sleep(0.2)
    raise AssertionError(f"no claim's outcome from the new primary within 30 s; the last failures: {seen[-3:]}")


async def test_without_waiting_for_replicas_a_failover_can_give_one_slot_to_two_players(
    sentinel_set: SentinelSet,
) -> None:
    """Why REDIS_WAIT_REPLICAS exists: Redis replicates after it answers, so a claim no
    replica got is gone with the primary, and its slot is handed out again."""
    store = store_on(sentinel_set.url, timeout_s=2.0)
    try:
        first = await _a_claim_as_the_primary_dies_unreplicated(sentinel_set, store, store)
        assert first is not None
        second = await after_failover(store)
        assert isinstance(second, Session), second
        assert second.slot_id == first.slot_id and second.session_id != first.session_id
    finally:
        await store.aclose()


async def test_waiting_for_a_replica_refuses_a_claim_none_holds_and_no_slot_goes_twice(
    sentinel_set: SentinelSet,
) -> None:
    """With wait_replicas=1 the same claim is refused within the wait (NotReplicated, a
    BackendUnavailable: 503 to the caller), so the one player told of the slot is the next.
    With the one replica now the primary, none is left to confirm: writes are refused."""
    store = store_on(sentinel_set.url, timeout_s=2.0, wait_replicas=1, wait_ms=300)
    plain = store_on(sentinel_set.url, prefix=store.prefix, timeout_s=2.0)
    try:
        first = await _a_claim_as_the_primary_dies_unreplicated(sentinel_set, store, plain)
        assert first is None
        assert store.round_trips.errors["allocate"] >= 1  # counted (/metrics: redis_errors_total)
        assert isinstance(await after_failover(plain), Session)  # the one slot, its first holder told
        assert await try_claim(plain) is NoClaim.NO_SLOT
        assert isinstance(await after_failover(store), NotReplicated)
    finally:
        await store.aclose()
        await plain.aclose()


async def test_waiting_for_a_replica_a_claim_confirmed_survives_the_failover_that_follows(
    sentinel_set: SentinelSet,
) -> None:
    """A confirmed claim is on the replica: the primary killed at once after it takes
    nothing with it, and the one slot goes to no one else."""
    store = store_on(sentinel_set.url, wait_replicas=1, wait_ms=CONFIRM_MS)
    plain = store_on(sentinel_set.url, prefix=store.prefix, timeout_s=2.0)
    try:
        await ready_host(store, slots=1)
        first = await claim(store)
        await sentinel_set.fail_over()  # no wait for replication here: the claim waited
        assert await after_failover(plain) is NoClaim.NO_SLOT
        probe = sentinel_set.replica.client()
        try:
            assert await probe.hexists(store._tag("acme") + ":sessions", first.session_id)
        finally:
            await probe.aclose()
    finally:
        await store.aclose()
        await plain.aclose()


async def test_waiting_for_one_of_two_replicas_writes_go_on_while_one_is_away(
    sentinel_set_2: SentinelSet,
) -> None:
    """The setting below the number of replicas: one replica frozen, the other confirms."""
    url = sentinel_set_2.url
    store = store_on(url, wait_replicas=1, wait_ms=CONFIRM_MS)
    both = store_on(url, prefix=store.prefix, timeout_s=2.0, wait_replicas=2, wait_ms=300)
    try:
        await ready_host(store, slots=4)
        sentinel_set_2.replicas[1].freeze()
        assert len({(await claim(store)).slot_id for _ in range(3)}) == 3
        with pytest.raises(NotReplicated):  # asking for both: the frozen one never confirms
            await try_claim(both)
    finally:
        await store.aclose()
        await both.aclose()


async def test_a_wait_that_redis_refuses_is_not_replicated(sentinel_set: SentinelSet) -> None:
    """A store wrongly pointed at a replica: its WAIT is refused, and the callers hear that
    nothing was confirmed (503), not a script error."""
    store = store_on(sentinel_set.replica.url, wait_replicas=1, wait_ms=300)
    try:
        with pytest.raises(NotReplicated, match="redis refused WAIT"):
            await try_claim(store)
    finally:
        await store.aclose()


async def test_an_allocation_the_replica_did_not_confirm_is_ended_not_left_holding_its_slot(
    sentinel_set: SentinelSet,
) -> None:
    """The player hears 503 and asks again; the matchmaker ends the unconfirmed session
    (never connected) at once, so its slot is not held until the connect timeout."""
    settings = MatchmakerSettings(
        state_url=sentinel_set.url,
        session_token_secret="s" * 32,
        redis_wait_replicas=1,
        redis_wait_ms=300,
        key_prefix=f"p{uuid.uuid4().hex[:8]}",
    )
    mm = build_matchmaker(settings, clock=lambda: 100.0)
    plain = store_on(sentinel_set.url, prefix=settings.key_prefix)
    try:
        await ready_host(plain, slots=1)
        sentinel_set.replica.freeze()
        with pytest.raises(NotReplicated):
            await mm.allocate(AllocationRequest(tenant="acme", app="game"))
        assert await plain.sessions() == []  # ended on the primary, though unconfirmed
        (slot,) = await plain.slots()
        assert slot.state is SlotState.READY and slot.session_id is None  # nobody ever connected to it
    finally:
        sentinel_set.replica.thaw()
        await mm.store.aclose()
        await plain.aclose()
