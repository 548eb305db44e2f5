"""Where the Redis store's wait for replicas (``REDIS_WAIT_REPLICAS``) cannot apply, it
refuses at start, with the reason; no connection is made. (It works on one Redis under
Sentinel and on Redis Cluster: tests/integration/test_store_pipe.py and
test_store_cluster_wait.py.)"""

from __future__ import annotations

import pytest

from matchmaker.server import build_matchmaker
from matchmaker.store import open_store
from matchmaker.store_redis import RedisStore
from pixelfleet.settings import load_settings


def test_memory_is_refused_a_wait_for_replicas() -> None:
    with pytest.raises(ValueError, match="needs a Redis state URL"):
        open_store("memory://", wait_replicas=1)


@pytest.mark.parametrize("wait_ms", [0, 5000])
def test_the_wait_stays_within_the_stores_limit_on_an_operation(wait_ms: int) -> None:
    with pytest.raises(ValueError, match="wait_ms from 1 to under 5000"):
        RedisStore.from_url("redis://127.0.0.1:6379/0", wait_replicas=1, wait_ms=wait_ms)


async def test_the_settings_reach_the_store() -> None:
    s = load_settings(
        {
            "PIXELFLEET_STATE_URL": "redis://127.0.0.1:6379/0",
            "PIXELFLEET_SESSION_TOKEN_SECRET": "s" * 32,
            "PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS": "2",
            "PIXELFLEET_MATCHMAKER__REDIS_WAIT_MS": "250",
        }
    ).matchmaker
    store = build_matchmaker(s).store
    try:
        assert isinstance(store, RedisStore) and (store.wait_replicas, store.wait_ms) == (2, 250)
    finally:
        await store.aclose()
