"""Reads the Redis store's keys directly, for invariants no public operation shows.

Key names come from ``matchmaker.redis_keys``, as the store builds them.
"""

from __future__ import annotations

from matchmaker.redis_keys import TenantKeys
from matchmaker.store_redis import RedisStore


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def placement_index(
    store: RedisStore, tenant: str, app: str, kind: str = "rz", region: str | None = None
) -> dict[str, float]:
    """One placement index of a tenant and app (``rz``: claimable slot -> load percent;
    ``fh``: host -> its claimable slots), all regions' or one region's: what allocate reads."""
    key = TenantKeys(store.prefix, tenant).index(kind, app, region)
    pairs: list[tuple[bytes | str, float]] = await store._r.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return {_text(m): float(score) for m, score in pairs}


async def indexed_slots(store: RedisStore, tenant: str, app: str) -> list[str]:
    """The sorted ids of the slots allocate may claim for this tenant and app."""
    return sorted(await placement_index(store, tenant, app))
