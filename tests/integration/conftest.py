"""Fixtures shared by the integration tests of the matchmaker's stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from matchmaker.store import Store, open_store


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
