"""The Redis store's round trips on its own pipe (one dedicated connection, batches not
waiting for each other's replies: pixelfleet/redis_pipe.py), against a real redis-server
that is killed, frozen, and failed over by a Sentinel. Whatever happens to Redis, an
operation ends with its result or BackendUnavailable, never hangs, and the next one after
Redis is back goes through on a new connection."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from matchmaker.models import Session, SlotState
from matchmaker.store import BackendUnavailable
from matchmaker.store_redis import RedisStore
from tests.integration.test_store_conformance import beat, claim, registration, try_claim
from tests.support.redis_sentinel import SentinelSet
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def ready_host(store: RedisStore, slots: int) -> None:
    await store.register_host(registration(slots=slots), 100.0)
    await store.heartbeat("h1", beat(states=dict.fromkeys(range(slots), SlotState.READY)), 100.0)


def _store(url: str, timeout_s: float = 5.0) -> RedisStore:
    return RedisStore.from_url(url, prefix=f"p{uuid.uuid4().hex[:8]}", timeout_s=timeout_s)


async def test_many_allocations_share_the_pipe_and_each_gets_its_own_slot(redis_tcp: RedisServer) -> None:
    store = _store(redis_tcp.url)
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
    store = _store(redis_tcp.url)
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
    store = _store(redis_tcp.url, timeout_s=1.0)
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
    store = _store(sentinel_set.url, timeout_s=2.0)
    try:
        await ready_host(store, slots=8)
        before = await claim(store)
        await sentinel_set.replicated()  # the host and the first claim are on the replica too
        await sentinel_set.fail_over()
        after: Session | None = None
        for _ in range(50):  # bounded: the first tries may still meet the old primary
            try:
                after = await claim(store)
                break
            except BackendUnavailable:
                await asyncio.sleep(0.2)
        assert after is not None and after.slot_id != before.slot_id  # the replica had the first claim
        probe = sentinel_set.replica.client()  # now the primary
        try:
            assert await probe.hexists(store._tag("acme") + ":sessions", after.session_id)
        finally:
            await probe.aclose()
    finally:
        await store.aclose()
