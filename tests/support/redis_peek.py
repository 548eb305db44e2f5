"""Reads the Redis store's keys directly, for invariants no public operation shows.

Key names come from ``matchmaker.redis_keys``, as the store builds them.
"""

from __future__ import annotations

from typing import Any

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


class PipelineCount:
    """How many round trips of ``_batch`` (writes on the store's pipe) the store makes from now on."""

    def __init__(self, store: RedisStore) -> None:
        self.n = 0
        real = store._round_trip

        async def counting(*args: Any, **kw: Any) -> Any:
            self.n += 1
            return await real(*args, **kw)

        setattr(store, "_round_trip", counting)  # noqa: B010 - mypy forbids assigning to a method
