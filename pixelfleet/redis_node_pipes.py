"""One pipe (``pixelfleet.redis_pipe``) per Redis server that keys go to: the one server, or
each shard primary of a Redis Cluster, opened on first use.

On a Cluster the server of a key comes from redis-py's slot map. A server that could not
be reached, or whose pipe got a MOVED or ASK (its slot moved) or some other sign that the
map is old, is marked stale:
the map is read anew before the next pipe to it is handed out, at most once per third of
the bound, so a storm of refusals reads it a few times a second, not once per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection

from pixelfleet.redis_pipe import Pipe, PipeBroken, Release, borrow
from pixelfleet.redis_timing import RoundTrips

__all__ = ["NodePipes"]


class NodePipes:
    """Pipes by server name ("" for the one server of a plain client)."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        bound_s: float,
        window: int = 256,
        round_trips: RoundTrips | None = None,
        op: str = "pipe",
    ) -> None:
        self._r = redis
        self._bound_s, self._window = bound_s, window
        self._round_trips, self._op = round_trips, op
        self._pipes: dict[str, Pipe] = {}
        self._stale: set[str] = set()  # servers whose slot map may be out of date
        self._refreshed_at = -math.inf  # when the Cluster slot map was last read anew

    async def get(self, key: str | bytes) -> tuple[str, Pipe]:
        """The name of the server that takes ``key``'s commands, and a live pipe to it."""
        name = self._server_of(key)
        if name in self._stale and isinstance(self._r, RedisCluster):
            self._stale.discard(name)
            now = time.monotonic()
            if now - self._refreshed_at >= self._bound_s / 3:  # at most once a beat
                self._refreshed_at = now
                await self._r.nodes_manager.initialize()
                name = self._server_of(key)
        pipe = self._pipes.get(name)
        if pipe is None or pipe.broken:
            try:
                conn, release = await self._connect(key)
            except Exception:
                self.stale(name)  # a node that cannot be reached may have lost its slots
                raise
            pipe = Pipe(
                conn, release, bound_s=self._bound_s, window=self._window, round_trips=self._round_trips, op=self._op
            )
            self._pipes[name] = pipe
        return name, pipe

    def stale(self, name: str) -> None:
        """Read the slot map anew before the next pipe to ``name`` is handed out."""
        self._stale.add(name)

    def _server_of(self, key: str | bytes) -> str:
        if not isinstance(self._r, RedisCluster):
            return ""
        node = self._r.get_node_from_key(key)  # type: ignore[arg-type]
        if node is None:
            raise PipeBroken(f"no Redis Cluster node serves {key!r}")
        return str(node.name)

    async def _connect(self, key: str | bytes) -> tuple[AbstractConnection, Release]:
        """A connection of the client's own kind (its auth, TLS, Sentinel primary lookup),
        kept for this pipe alone."""
        if not isinstance(self._r, RedisCluster):
            return await borrow(self._r, self._bound_s)
        node = self._r.get_node_from_key(key)  # type: ignore[arg-type]
        assert node is not None
        conn: AbstractConnection = node.connection_class(**node.connection_kwargs)

        async def close() -> None:
            await conn.disconnect()

        async with asyncio.timeout(self._bound_s):
            await conn.connect()  # type: ignore[no-untyped-call]
        return conn, close

    async def aclose(self, within_s: float = 0.0) -> None:
        """Close every pipe, after waiting up to ``within_s`` for the replies still due."""
        pipes, self._pipes = list(self._pipes.values()), {}
        if pipes and within_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.drained() for p in pipes)), within_s)
        for pipe in pipes:
            await pipe.aclose()
