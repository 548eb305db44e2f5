"""Fixtures shared by the integration tests: the matchmaker's stores, a Redis to kill."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from matchmaker.store import Store, open_store
from tests.conftest import require_binary
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
