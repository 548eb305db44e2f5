"""The Redis store waiting for replicas on a Redis Cluster (``REDIS_WAIT_REPLICAS``): each
call and its WAIT go together to the primary of the call's shard, so a claim is confirmed
by that shard's replica, refused while the replica is away, and survives the crash of its
primary. A real cluster of three shards, one replica each."""

from __future__ import annotations

import asyncio

import pytest

from matchmaker.models import Session
from matchmaker.store import NoClaim, NotReplicated
from matchmaker.store_redis import RedisStore
from tests.integration.test_store_conformance import claim, try_claim
from tests.integration.test_store_pipe import CONFIRM_MS, after_failover, ready_host, store_on
from tests.support.redis_cluster import RedisCluster
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


def _stores(url: str) -> tuple[RedisStore, RedisStore]:
    """A store that waits for one replica, and one on the same keys that does not."""
    waiting = store_on(url, wait_replicas=1, wait_ms=CONFIRM_MS)
    return waiting, store_on(url, prefix=waiting.prefix)


async def _shard(cluster: RedisCluster, store: RedisStore) -> tuple[int, list[int]]:
    """(primary, replicas) of the shard holding the tenant's keys."""
    return await asyncio.to_thread(cluster.shard_of, store._tag("acme"))


async def test_on_a_cluster_a_claim_waits_for_its_shards_replica_and_is_refused_without_it(
    failover_cluster: RedisCluster,
) -> None:
    store, plain = _stores(failover_cluster.url)
    short = store_on(failover_cluster.url, prefix=store.prefix, wait_replicas=1, wait_ms=300)
    try:
        await ready_host(store, slots=4)  # through the waiting store: every call confirmed
        assert isinstance(await claim(store), Session)
        for s in (plain, short):  # their clients know the cluster before a node is frozen (a
            await s.serves("acme", "app")  # client that never connected knows only its URL's node)
        _, replicas = await _shard(failover_cluster, store)
        await asyncio.to_thread(failover_cluster.freeze, replicas[0])
        with pytest.raises(NotReplicated):
            await try_claim(short)
        assert short.round_trips.errors["allocate"] == 1
        assert isinstance(await claim(plain), Session)  # the primary itself is fine
    finally:
        for s in (store, plain, short):
            await s.aclose()


async def test_on_a_cluster_a_confirmed_claim_survives_the_crash_of_its_shards_primary(
    failover_cluster: RedisCluster,
) -> None:
    """Killed at once after a confirmed claim, the primary takes nothing with it: once its
    replica has taken the slots over, the session is there and the one slot has no second
    holder. Read by a client made after the takeover, from a node still up: a client that
    never connected knows only the node its URL names, which may be the one killed."""
    store, _ = _stores(failover_cluster.url)
    try:
        await ready_host(store, slots=1)
        first = await claim(store)
        tag = store._tag("acme")
        primary, replicas = await _shard(failover_cluster, store)
        await asyncio.to_thread(failover_cluster.kill, primary)  # at once: the claim waited

        async def taken_over() -> bool:
            return (await asyncio.to_thread(failover_cluster.shard_of, tag))[0] == replicas[0]

        await eventually(taken_over, "the replica taking its primary's slots over", 30.0)
        fresh = store_on(failover_cluster.url, prefix=store.prefix)
        try:
            assert await after_failover(fresh) is NoClaim.NO_SLOT  # the one slot, its one holder
            assert await fresh.session(first.session_id) is not None
        finally:
            await fresh.aclose()
    finally:
        await store.aclose()
