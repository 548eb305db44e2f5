"""Fixtures shared by the integration tests: the matchmaker's stores, a Redis to kill."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from matchmaker.store import Store, open_store
from tests.conftest import require_binary
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_sentinel import SentinelSet
from tests.support.redis_server import RedisServer


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """Each store the conformance suites run on: memory, one real Redis, a real 3-node
    Redis Cluster (each Redis one on a fresh key prefix)."""
    if request.param == "memory":
        s = open_store("memory://")
    else:
        url = request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
        s = open_store(url, prefix=f"t{uuid.uuid4().hex[:8]}")
    yield s
    await s.aclose()


@pytest.fixture
async def redis_tcp(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server on a fixed TCP port that the test may kill and start again."""
    server = RedisServer(require_binary("redis-server"), tmp_path / "redis")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sentinel_set(tmp_path: Path) -> AsyncIterator[SentinelSet]:
    """A Redis primary, its replica and a Sentinel watching them, for failover tests."""
    servers = SentinelSet(require_binary("redis-server"), tmp_path / "sentinel-set")
    await servers.start()
    yield servers
    await servers.stop()


@pytest.fixture
async def sentinel_set_2(tmp_path: Path) -> AsyncIterator[SentinelSet]:
    """As ``sentinel_set`` with two replicas: one may be lost and another still confirms."""
    servers = SentinelSet(require_binary("redis-server"), tmp_path / "sentinel-set", replicas=2)
    await servers.start()
    yield servers
    await servers.stop()


@pytest.fixture
async def failover_cluster(tmp_path: Path) -> AsyncIterator[RedisCluster]:
    """A Redis Cluster of the test's own to fail over or freeze: three shards, one replica
    each; a node seen dead after 2 s (so a frozen primary is replaced within seconds)."""
    redis_cluster = RedisCluster(require_binary("redis-server"), require_binary("redis-cli"), tmp_path / "cluster")
    try:
        await asyncio.to_thread(redis_cluster.start)
        await redis_cluster.until_healthy()
        yield redis_cluster
    finally:
        await asyncio.to_thread(redis_cluster.stop)
